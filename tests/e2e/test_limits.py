"""Rate limits through the relay: per-key buckets and their headers, per-account budgets, limits that change
while the relay runs, and (with a real Redis) several workers sharing exact limits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from relay.auth import new_secret
from relay.config import hash_key
from relay.store import Store
from relay.types import KeyRecord
from tests.conftest import CLIENT_KEY, ROOT, RelayFactory, Upstream

REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BODY = {"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def add_key(database: str, **fields: Any) -> str:
    secret = new_secret()
    store = Store(database)
    await store.open()
    try:
        await store.create_key(
            KeyRecord(id="key_" + os.urandom(8).hex(), name="limited", key_hash=hash_key(secret), prefix=secret[:7], **fields)
        )
    finally:
        await store.close()
    return secret


async def post(http: aiohttp.ClientSession, url: str, secret: str) -> tuple[int, Any, dict[str, str]]:
    async with http.post(url + "/chat/completions", json=BODY, headers={"Authorization": f"Bearer {secret}"}) as r:
        return r.status, await r.json(), dict(r.headers)


async def until_known(http: aiohttp.ClientSession, url: str, secret: str) -> tuple[int, Any, dict[str, str]]:
    for _ in range(40):
        got = await post(http, url, secret)
        if got[0] != 401:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("the relay never picked up the new key")


async def test_rpm_limit_headers_and_429(relay_factory: RelayFactory) -> None:
    relay = await relay_factory()
    secret = await add_key(relay.database, rpm=3, tpm=100_000)
    async with aiohttp.ClientSession() as http:
        seen = [await until_known(http, relay.v1, secret)]
        seen += [await post(http, relay.v1, secret) for _ in range(3)]
    assert [s for s, _, _ in seen] == [200, 200, 200, 429]
    remaining = [h["x-ratelimit-remaining-requests"] for _, _, h in seen[:3]]
    assert remaining == ["2", "1", "0"]
    h = seen[0][2]
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-limit-tokens"] == "100000"
    assert h["x-ratelimit-reset-requests"].endswith("s")  # OpenAI's duration format, e.g. "20s"
    _status, body, headers = seen[3]
    assert body["error"]["code"] == "rate_limit_exceeded" and "RPM" in body["error"]["message"]
    assert 1 <= int(headers["Retry-After"]) <= 21
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=secret, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**BODY)  # type: ignore[call-overload]


async def test_token_limit_names_tpm_and_a_request_larger_than_the_bucket(relay_factory: RelayFactory) -> None:
    relay = await relay_factory()
    secret = await add_key(relay.database, tpm=5)  # smaller than any request's estimate
    async with aiohttp.ClientSession() as http:
        status, body, headers = await until_known(http, relay.v1, secret)
    assert status == 429 and "TPM" in body["error"]["message"]
    assert headers.get("x-should-retry") == "false"  # it can never fit: retrying cannot help


async def test_limits_change_while_the_relay_runs(relay_factory: RelayFactory) -> None:
    relay = await relay_factory()
    secret = await add_key(relay.database, rpm=1)
    async with aiohttp.ClientSession() as http:
        assert (await until_known(http, relay.v1, secret))[0] == 200
        assert (await post(http, relay.v1, secret))[0] == 429
        store = Store(relay.database)
        await store.open()
        try:
            (key,) = [k for k in await store.list_keys() if k.name == "limited"]
            await store.update_key(key.id, {"rpm": 1000})
        finally:
            await store.close()
        deadline = time.monotonic() + 1.0
        while (got := await post(http, relay.v1, secret))[0] != 200:
            assert time.monotonic() < deadline, "the raised limit did not apply within 1 s"
            await asyncio.sleep(0.05)
        assert got[2]["x-ratelimit-limit-requests"] == "1000"


async def test_account_budgets_skip_spent_accounts_then_429(relay_factory: RelayFactory, upstream: Upstream) -> None:
    channel = {
        "name": "fake", "type": "openai", "base_url": upstream.url, "keys": ["acct-0", "acct-1"],
        "models": ["demo"], "rpm": 2,
    }
    relay = await relay_factory(channels=[channel])
    async with aiohttp.ClientSession() as http:
        results = [await post(http, relay.v1, CLIENT_KEY) for _ in range(5)]
    assert [s for s, _, _ in results] == [200, 200, 200, 200, 429]
    used = sorted(r.key for r in upstream.records)
    assert used == ["acct-0", "acct-0", "acct-1", "acct-1"]  # each account within its own budget
    _, body, headers = results[4]
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 30


# -- Redis: several workers share exact limits -------------------------------------------------------------


def redis_reachable() -> bool:
    from urllib.parse import urlsplit

    u = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not redis_reachable() and os.environ.get("CI") != "true",
    reason=f"no Redis at {REDIS_URL} (set RELAY_TEST_REDIS_URL); in CI these tests must run",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, upstream_url: str, **limits: Any) -> Path:
    cfg = {
        "database": str(tmp_path / "relay.db"),
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream_url, "keys": ["a", "b"], "models": ["demo"]}],
        "prices": {"demo": {"input": 1, "output": 2}},
        "limits": {"backend": "redis", "redis_url": REDIS_URL, **limits},
        "ledger": {"flush_interval": 0.2},
        "log_level": "warning",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unreachable_redis_stops_the_start_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", redis_url="redis://127.0.0.1:1/0")
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "limits.redis_url" in lines[0] and "127.0.0.1:1" in lines[0]


@needs_redis
async def test_four_workers_on_redis_share_one_rpm_limit_exactly(tmp_path: Path, upstream: Upstream) -> None:
    """rpm=120 under a 60-second flood through 4 worker processes admits the burst plus 120, within 3 %."""
    config = write_config(tmp_path, upstream.url)
    secret = await add_key_fresh(tmp_path / "relay.db", config)
    port = free_port()
    log = (tmp_path / "relay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", str(port), "--workers", "4"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("relay did not start")
            statuses: list[tuple[float, int]] = []

            async def one(sent: float) -> None:
                async with http.post(
                    url + "/chat/completions", json=BODY, headers={"Authorization": f"Bearer {secret}"}
                ) as r:
                    await r.read()
                    statuses.append((sent, r.status))

            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks = []
            # 50 requests a second for 60 s: 25 times the limit, spread over every worker's connections
            for i in range(3000):
                at = start + i * 0.02
                await asyncio.sleep(max(0.0, at - loop.time()))
                tasks.append(asyncio.create_task(one(loop.time() - start)))
            await asyncio.gather(*tasks)
        admitted = sum(1 for _, s in statuses if s == 200)
        others = {s for _, s in statuses if s != 200}
        assert others <= {429}, others
        assert abs((admitted - 120) - 120) <= 0.03 * 120, f"{admitted} admitted (expected 240 ± 3.6)"
    finally:
        log.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def add_key_fresh(database: Path, config: Path) -> str:
    """A key with rpm=120 in a database the relay has not created yet (the CLI path: schema first)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "keys", "create", "--config", str(config), "--name", "flood", "--rpm", "120",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip().splitlines()[-1]


def test_local_limits_with_several_workers_say_each_enforces_its_share(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", backend="local")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        said = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if "limits.backend is local with 2 workers" in line:
                said = line
                break
        assert "each worker enforces 1/2 of every key's limits" in said
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
