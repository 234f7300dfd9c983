"""Several relay processes on one PostgreSQL database and one Redis, as on several machines.

Two `relay serve` processes on different ports (two "machines"), the second with `--workers 2`, share one
PostgreSQL database (a new one per test, dropped afterwards) and one Redis (a key prefix per test): keys
made by the CLI reach every process within 1 s, a balance is never overspent by any number of them, and a
process killed with kill -9 leaves the books whole and its unused slice of a balance to the others once
its lease expires. Without PostgreSQL or Redis these tests skip, saying why; with CI=true they fail.

Prices as in test_billing: a chat request with max_tokens=8 reserves exactly $1 and costs exactly $1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from tests import redisdb
from tests.pg import pg_database
from tests.procs import ROOT, Answer, Processes, auth, exit_code

PRICES = {"demo": {"input": 0, "output": 125000}}
MAX_TOKENS = 8
UNIT = 1.0
MSGS = [{"role": "user", "content": "How much does this cost?"}]
REDIS_URL = redisdb.REDIS_URL
LEASE_TTL = 3.0


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with redisdb.redis_prefix("scale") as prefix:
        yield prefix


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with pg_database() as url:
        yield url


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


async def write_config(tmp_path: Path, processes: Processes, database: str, prefix: str) -> Path:
    upstream = await processes.fake_upstream("--chunks", "8", "--chunk-delay-ms", "10")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "shutdown_grace": 5},
        "database": database,
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream,
                      "keys": ["acct-0", "acct-1", "acct-2"], "models": ["demo"]}],
        "prices": PRICES,
        "ledger": {"flush_interval": 0.05, "journal_dir": str(tmp_path / "journal")},
        "limits": {"backend": "redis", "redis_url": REDIS_URL, "prefix": prefix},
        "billing": {"lease_ttl": LEASE_TTL},
        "log_level": "warning",
    }))
    return config


def cli(config: Path, *args: str) -> str:
    """`relay ...` as an operator runs it; returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "relay", *args, "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_key(config: Path, quota: float | None = None) -> tuple[str, str]:
    """A key made with `relay keys create`; returns (id, secret)."""
    args = ["keys", "create", "--name", "scale"] + ([] if quota is None else ["--quota", str(quota)])
    out = cli(config, *args).strip().splitlines()
    key_id = next(line.split()[1] for line in out if line.startswith("id:"))
    return key_id, out[-1]


async def chat(http: aiohttp.ClientSession, url: str, secret: str, stream: bool = False) -> Answer:
    req = {"model": "demo", "messages": MSGS, "max_tokens": MAX_TOKENS, "stream": stream}
    async with http.post(url + "/v1/chat/completions", json=req, headers=auth(secret)) as resp:
        return Answer(resp.status, dict(resp.headers), await resp.read())


async def models(url: str, secret: str) -> Answer:
    """A request on a new connection: with several workers on one port each connection may reach another."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url + "/v1/models", headers=auth(secret)) as resp:
            return Answer(resp.status, dict(resp.headers), await resp.read())


async def within(seconds: float, url: str, secret: str, want: int, times: int = 12) -> float:
    """Seconds until `times` answers in a row from `url` have status `want` (fails after `seconds`)."""
    started = time.monotonic()
    streak = 0
    while streak < times:
        a = await models(url, secret)
        streak = streak + 1 if a.status == want else 0
        assert time.monotonic() - started < seconds, f"{url} still answers {a.status} {a.code} after {seconds}s"
    return time.monotonic() - started


async def books(database: str) -> dict[str, tuple[float | None, float, float, float]]:
    """Key id -> (granted, spent, ledger sum of cost, live leases), read from PostgreSQL."""
    conn = await asyncpg.connect(database)
    try:
        keys = await conn.fetch("SELECT id, granted_usd, spent_usd FROM keys")
        ledger = dict(await conn.fetch("SELECT key_id, SUM(cost_usd) FROM usage GROUP BY key_id"))
        leases = dict(await conn.fetch(
            "SELECT key_id, SUM(amount_usd) FROM leases WHERE expires_at > extract(epoch from now()) GROUP BY key_id"
        ))
    finally:
        await conn.close()
    return {
        k["id"]: (k["granted_usd"], k["spent_usd"], float(ledger.get(k["id"], 0.0)), float(leases.get(k["id"], 0.0)))
        for k in keys
    }


async def settled(
    database: str, key_id: str, rows: int | None = None, timeout: float = 15.0,
) -> tuple[float | None, float, float, float]:
    """The key's books once every process wrote what it charged: `rows` ledger rows for the key, or (not
    knowing how many) no change for a second."""
    deadline = time.monotonic() + timeout
    last: tuple[Any, ...] | None = None
    stable_since = time.monotonic()
    while True:
        conn = await asyncpg.connect(database)
        try:
            count = await conn.fetchval("SELECT COUNT(*) FROM usage WHERE key_id = $1", key_id)
        finally:
            await conn.close()
        row = (await books(database))[key_id]
        now = (count, *row)
        if now != last:
            last, stable_since = now, time.monotonic()
        if (count >= rows) if rows is not None else time.monotonic() - stable_since >= 1.0:
            assert abs(row[1] - row[2]) <= 1e-9, ("spent is not the ledger's sum", row)
            return row
        assert time.monotonic() < deadline, f"the ledger holds {count} rows for the key, not {rows}"
        await asyncio.sleep(0.1)


async def held_by(database: str, key_id: str, port: str) -> float:
    """What the relay on `port` holds of the key in live leases (its holder name carries its port)."""
    conn = await asyncpg.connect(database)
    try:
        got = await conn.fetchval(
            "SELECT COALESCE(SUM(amount_usd), 0) FROM leases WHERE key_id = $1 AND holder LIKE $2 "
            "AND expires_at > extract(epoch from now())", key_id, f"%:{port}:%",
        )
    finally:
        await conn.close()
    return float(got)


def assert_books_whole(b: dict[str, tuple[float | None, float, float, float]]) -> None:
    for key_id, (granted, spent, ledger, _) in b.items():
        assert abs(spent - ledger) <= 1e-9, (key_id, spent, ledger)
        if granted is not None:
            assert spent <= granted + 1e-9, (key_id, spent, granted)


async def test_keys_made_by_the_cli_reach_every_process_within_a_second(
    tmp_path: Path, processes: Processes, database: str, redis_prefix: str,
) -> None:
    config = await write_config(tmp_path, processes, database, redis_prefix)
    _, a = await processes.relay(config, log="a.log")
    _, b = await processes.relay(config, None, "--workers", "2", log="b.log")
    key_id, secret = new_key(config, quota=5)
    for url in (a, b):
        assert await within(1.0, url, secret, 200) < 1.0
    cli(config, "keys", "revoke", key_id)
    for url in (a, b):
        await within(1.0, url, secret, 401)
    assert (await models(a, secret)).code == "key_revoked"


async def test_1000_concurrent_requests_over_two_relays_never_overspend(
    tmp_path: Path, processes: Processes, database: str, redis_prefix: str,
) -> None:
    config = await write_config(tmp_path, processes, database, redis_prefix)
    _, a = await processes.relay(config, log="a.log")
    _, b = await processes.relay(config, None, "--workers", "2", log="b.log")
    key_id, secret = new_key(config, quota=100 * UNIT)
    for url in (a, b):
        await within(2.0, url, secret, 200, times=4)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        answers = await asyncio.gather(
            *(chat(http, (a, b)[i % 2], secret, stream=i % 4 < 2) for i in range(1000))
        )
    ok = [x for x in answers if x.status == 200]
    others = {(x.status, x.code) for x in answers if x.status != 200}
    assert others <= {(429, "insufficient_quota")}, others
    # 3 processes hold slices; what each strands is less than one request's worth
    assert 95 <= len(ok) <= 100, (len(ok), others)
    granted, spent, ledger, _ = await settled(database, key_id, rows=1000)  # one row per request
    assert granted == 100 * UNIT
    assert spent == ledger == len(ok) * UNIT
    assert granted - spent >= 0


async def test_kill_9_of_one_relay_keeps_the_books_and_its_slice_returns_after_the_lease(
    tmp_path: Path, processes: Processes, database: str, redis_prefix: str,
) -> None:
    config = await write_config(tmp_path, processes, database, redis_prefix)
    proc_a, a = await processes.relay(config, log="a.log")
    _, b = await processes.relay(config, log="b.log")
    granted = 200 * UNIT
    key_id, secret = new_key(config, quota=granted)
    _, unlimited = new_key(config)
    for url in (a, b):
        await within(2.0, url, secret, 200, times=2)

    served = {"a": 0, "b": 0}
    stop = asyncio.Event()

    async def load(name: str, url: str, key: str, counted: bool) -> None:
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=10)) as http:
            n = 0
            while not stop.is_set():
                try:
                    x = await chat(http, url, key, stream=n % 2 == 0)
                except (TimeoutError, aiohttp.ClientError):
                    return  # that relay is gone
                n += 1
                if x.status == 200 and counted:
                    served[name] += 1
                if x.status == 429:
                    return  # the balance is spent

    loaders = [asyncio.create_task(load("a", a, secret, True)) for _ in range(6)]
    loaders += [asyncio.create_task(load("a", a, unlimited, False)) for _ in range(2)]
    deadline = time.monotonic() + 20
    while served["a"] < 10:  # under load, not at a fixed time: a busy machine may take a while to serve
        assert time.monotonic() < deadline, f"only {served['a']} requests served in 20 s"
        await asyncio.sleep(0.05)
    proc_a.send_signal(signal.SIGKILL)  # this PID only
    assert await exit_code(proc_a, 5) == -signal.SIGKILL
    await asyncio.wait_for(asyncio.gather(*loaders), 15)
    assert served["a"] > 0, "no request completed before the kill"

    killed_at = time.monotonic()
    port_a = a.rsplit(":", 1)[1]
    # what A served but had not flushed is in its journal: B, on the same machine, writes it within a second
    while any(f"%3A{port_a}%3A" in p.name for p in (tmp_path / "journal").glob("*.journal")):
        assert time.monotonic() - killed_at < 10, "the killed relay's journal was not written by the other"
        await asyncio.sleep(0.05)
    now = await books(database)
    assert_books_whole(now)  # what was written is whole: rows and spent in one transaction
    spent_before = now[key_id][1]
    assert spent_before >= served["a"] * UNIT  # every request A answered is charged
    assert await held_by(database, key_id, port_a) > UNIT, "the killed relay held no slice of the balance"

    # the dead relay's slice is held until its lease expires, then relay B may spend it all
    await asyncio.sleep(max(0.0, LEASE_TTL + 0.5 - (time.monotonic() - killed_at)))
    assert await held_by(database, key_id, port_a) == 0.0
    loaders = [asyncio.create_task(load("b", b, secret, True)) for _ in range(6)]
    await asyncio.wait_for(asyncio.gather(*loaders), 60)
    _, spent, ledger, _ = await settled(database, key_id)
    assert spent == ledger
    assert spent <= granted + 1e-9
    # everything but what B strands in its own slice (under one request) was spent: A's slice came back
    assert spent == spent_before + served["b"] * UNIT
    assert spent >= granted - UNIT, (spent, granted)

    # A restarted on its port: the books still hold, and it serves the unlimited key at once
    _, a = await processes.relay(config, int(port_a), log="a.log")
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, a, unlimited)).status == 200
        assert (await chat(http, a, secret)).code == "insufficient_quota"
    assert_books_whole(await books(database))


class Forwarder:
    """A TCP forwarder in front of PostgreSQL: `cut()` drops every connection and refuses new ones (the
    database "goes down" for the relay alone), `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.difference_update((writer, up_writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._links):
            w.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        await self.start()


async def test_postgres_down_requests_go_on_against_the_slices_and_rows_wait(
    upstream: Any, database: str, caplog: pytest.LogCaptureFixture,
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from relay.app import start
    from relay.config import parse_config
    from relay.storage import make_store
    from tests.conftest import relay_config

    parts = urlsplit(database)
    fwd = Forwarder((parts.hostname or "127.0.0.1", parts.port or 5432))
    await fwd.start()
    via = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{fwd.port}"))
    cfg = parse_config(relay_config(upstream.url, via, prices=PRICES), os.environ)
    runner, url = await start(cfg, "127.0.0.1", 0)
    direct = make_store(database)
    await direct.open()
    try:
        from relay.auth import new_secret
        from relay.config import hash_key
        from relay.types import KeyRecord

        secret = new_secret()
        key = await direct.create_key(KeyRecord(
            id="key_" + uuid.uuid4().hex[:12], name="outage", key_hash=hash_key(secret), prefix=secret[:7],
            granted_usd=40 * UNIT,
        ))
        async with aiohttp.ClientSession() as http:
            await within(2.0, url, secret, 200, times=1)
            assert (await chat(http, url, secret)).status == 200  # the first request leases a slice
            await fwd.cut()
            served = sum([(await chat(http, url, secret, stream=i % 2 == 0)).status == 200 for i in range(6)])
            assert served == 6, "requests stopped when the database went away"
            await asyncio.sleep(0.5)  # a few failed ledger writes
            async with http.get(url + "/healthz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "degraded", "store": "down"}
            async with http.get(url + "/metrics") as resp:
                text = await resp.text()
            assert "relay_store_up 0.0" in text
            assert 'relay_store_errors_total{caller="ledger"}' in text
            failed = [r for r in caplog.records if "the store failed" in r.getMessage() and r.name == "relay.ledger"]
            assert len(failed) == 1, [r.getMessage() for r in caplog.records]

            await fwd.restore()
            _, spent, ledger, _ = await settled(database, key.id, rows=7)
            assert spent == ledger == 7 * UNIT  # nothing served during the outage was lost
            await asyncio.sleep(1.2)  # the balance keeper's next try finds the store again
            async with http.get(url + "/healthz") as resp:
                assert (await resp.json())["store"] == "ok"
            assert any("answers again" in r.getMessage() for r in caplog.records if r.name == "relay.ledger")
    finally:
        await direct.close()
        await runner.cleanup()
        if fwd._server is not None:
            await fwd.cut()
