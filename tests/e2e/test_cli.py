"""`relay keys ...` and `relay usage` as real subprocesses on the same SQLite file a running relay uses: what
the CLI writes reaches the relay within 1 s, secrets are printed once and never stored, and a bad argument
is one line on stderr and status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tests.conftest import CLIENT_KEY, ROOT, Relay, RelayFactory, Upstream, relay_config

MSGS = [{"role": "user", "content": "Hello"}]
SECRET = re.compile(r"sk-[A-Za-z0-9_-]{40,}")


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def cli(*args: str) -> Run:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def write_config(tmp_path: Path, upstream: Upstream, database: str) -> Path:
    """A config.yaml like the relay's, naming its database."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(relay_config(upstream.url, database)))
    return path


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> Relay:
    return await relay_factory()


@pytest.fixture
def config(tmp_path: Path, upstream: Upstream, relay: Relay) -> Path:
    """The config file of the running relay: the CLI works on the same database file."""
    return write_config(tmp_path, upstream, relay.database)


async def chat(http: aiohttp.ClientSession, relay: Relay, secret: str) -> tuple[int, dict[str, Any]]:
    async with http.post(relay.v1 + "/chat/completions", json={"model": "demo", "messages": MSGS},
                         headers={"Authorization": f"Bearer {secret}"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def until(http: aiohttp.ClientSession, relay: Relay, secret: str, status: int, within: float = 1.0,
                ) -> tuple[int, dict[str, Any], float]:
    """Ask until the relay answers `status`; returns the last answer and how long it took."""
    started = time.monotonic()
    while True:
        got, body = await chat(http, relay, secret)
        waited = time.monotonic() - started
        if got == status or waited > within:
            return got, body, waited
        await asyncio.sleep(0.02)


async def create(config: Path, *args: str) -> tuple[str, Run]:
    run = await cli("keys", "create", "--config", str(config), *args)
    assert run.code == 0, run.err
    secret = run.lines[-1]
    assert SECRET.fullmatch(secret), run.out
    assert secret not in "\n".join(run.lines[:-1]) and secret not in run.err
    return secret, run


def key_table(relay: Relay) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(relay.database)) as db:
        return db.execute("SELECT * FROM keys ORDER BY id").fetchall()


def field(run: Run, name: str) -> str:
    [line] = [line for line in run.lines if line.startswith(name + ":")]
    return line.split(":", 1)[1].strip()


# -- against a running relay -------------------------------------------------------------------------------


async def test_created_key_works_within_a_second(config, relay, http):
    secret, run = await create(config, "--name", "x", "--quota", "5")
    assert field(run, "prefix") == secret[:7]
    assert re.fullmatch(r"key_[0-9a-f]{16}", field(run, "id"))
    status, body, waited = await until(http, relay, secret, 200)
    assert status == 200, body
    assert waited <= 1.0


async def test_list_shows_keys_without_secrets(config, relay, http):
    secret, run = await create(config, "--name", "listed", "--quota", "2.5", "--rpm", "60", "--models", "demo,gpt-4o*",
                               "--expires", "2099-12-31")
    key_id = field(run, "id")
    listing = await cli("keys", "list", "--config", str(config))
    assert listing.code == 0, listing.err
    header = listing.lines[0].split()
    assert header[:7] == ["ID", "PREFIX", "NAME", "STATUS", "GRANTED", "SPENT", "REMAINING"]
    [row] = [line for line in listing.lines if line.startswith(key_id)]
    assert secret[:7] in row and "listed" in row and "active" in row and "$2.5000" in row
    assert "rpm=60" in row and "models=demo,gpt-4o*" in row and "2099-12-31" in row
    assert any(line.startswith("cfg-test") for line in listing.lines)  # the config's key too
    as_json = await cli("keys", "list", "--config", str(config), "--json")
    items = {d["id"]: d for d in map(orjson.loads, as_json.lines)}
    assert items[key_id]["granted_usd"] == 2.5 and items[key_id]["remaining_usd"] == 2.5
    for out in (listing.out, as_json.out):
        assert secret not in out and hashlib.sha256(secret.encode()).hexdigest() not in out
        assert CLIENT_KEY not in out and hashlib.sha256(CLIENT_KEY.encode()).hexdigest() not in out
        assert not SECRET.search(out)


@pytest.mark.parametrize("by", ["id", "prefix"])
async def test_revoke_takes_effect_within_a_second(config, relay, http, by):
    secret, run = await create(config, "--name", "doomed")
    assert (await until(http, relay, secret, 200))[0] == 200
    ref = field(run, "id") if by == "id" else secret[:7]
    revoked = await cli("keys", "revoke", "--config", str(config), ref)
    assert revoked.code == 0, revoked.err
    assert "revoked" in revoked.out
    status, body, waited = await until(http, relay, secret, 401)
    assert status == 401 and body["error"]["code"] == "key_revoked", body
    assert waited <= 1.0
    listing = await cli("keys", "list", "--config", str(config))
    [row] = [line for line in listing.lines if line.startswith(field(run, "id"))]
    assert "revoked" in row


async def test_topup_takes_effect_within_a_second(config, relay, http):
    secret, run = await create(config, "--name", "broke", "--quota", "0")
    status, body, _ = await until(http, relay, secret, 429)
    assert status == 429 and body["error"]["code"] == "insufficient_quota", body
    topped = await cli("keys", "topup", "--config", str(config), secret[:7], "--usd", "3")
    assert topped.code == 0, topped.err
    assert "granted $3.0000" in topped.out
    status, body, waited = await until(http, relay, secret, 200)
    assert status == 200, body
    assert waited <= 1.0
    again = await cli("keys", "topup", "--config", str(config), field(run, "id"), "--usd", "1.5")
    assert again.code == 0 and "granted $4.5000" in again.out


async def test_usage_summary(config, relay, http):
    secret, run = await create(config, "--name", "busy", "--quota", "5")
    for _ in range(3):
        assert (await until(http, relay, secret, 200))[0] == 200
    key_id = field(run, "id")
    today = datetime.now(UTC).date().isoformat()
    rows: list[dict[str, Any]] = []
    for _ in range(50):  # the relay's ledger writes every 50 ms in tests
        usage = await cli("usage", "--config", str(config), "--key", key_id, "--json")
        assert usage.code == 0, usage.err
        rows = [orjson.loads(line) for line in usage.lines]
        if rows and rows[0]["requests"] == 3:
            break
        await asyncio.sleep(0.1)
    assert [(r["key"], r["model"], r["day"], r["requests"]) for r in rows] == [(key_id, "demo", today, 3)]
    assert rows[0]["cost_usd"] > 0

    table = await cli("usage", "--config", str(config), "--key", secret[:7], "--since", today)
    assert table.code == 0, table.err
    assert table.lines[0].split()[:6] == ["KEY", "NAME", "MODEL", "DAY", "REQUESTS", "OK"]
    [row] = [line for line in table.lines if line.startswith(key_id)]
    assert row.split()[:6] == [key_id, "busy", "demo", today, "3", "3"]
    assert table.lines[-1].startswith("total")
    everyone = await cli("usage", "--config", str(config))
    assert any(line.startswith(key_id) for line in everyone.lines)
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    later = await cli("usage", "--config", str(config), "--since", tomorrow)
    assert later.code == 0 and later.out.strip() == "(none)"


async def test_database_holds_no_plaintext_key(config, relay, http):
    secrets = []
    for i in range(3):
        secret, _ = await create(config, "--name", f"k{i}", "--quota", "1")
        assert (await until(http, relay, secret, 200))[0] == 200
        secrets.append(secret)
    await cli("keys", "revoke", "--config", str(config), secrets[0][:7])
    await cli("keys", "topup", "--config", str(config), secrets[1][:7], "--usd", "1")
    name = Path(relay.database).name
    files = [p for p in Path(relay.database).parent.iterdir() if p.name.startswith(name)]
    assert any(p.name == name + "-wal" for p in files)
    data = b"".join(p.read_bytes() for p in files)
    assert len(data) > 0
    for secret in [*secrets, CLIENT_KEY]:
        assert secret.encode() not in data
        assert secret[7:].encode() not in data  # not even the part after the shown prefix
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in data  # only its hash


# -- without a running relay -----------------------------------------------------------------------------------


async def test_key_created_before_the_relay_starts(relay_factory, upstream, http, tmp_path):
    database = tmp_path / "relay0.db"  # the file the first relay of this test will use
    config = write_config(tmp_path, upstream, str(database))
    secret, _ = await create(config, "--name", "early", "--quota", "1")
    assert database.exists()
    listing = await cli("keys", "list", "--config", str(config))
    assert secret[:7] in listing.out
    relay = await relay_factory()
    assert relay.database == str(database)
    status, body = await chat(http, relay, secret)
    assert status == 200, body


@pytest.mark.parametrize("args, names", [
    (["keys", "create", "--name", "x", "--quota", "-1"], "--quota"),
    (["keys", "create", "--name", "x", "--quota", "lots"], "--quota"),
    (["keys", "create", "--name", "x", "--rpm", "0"], "--rpm"),
    (["keys", "create", "--name", "x", "--tpm", "1.5"], "--tpm"),
    (["keys", "create", "--name", "x", "--expires", "next week"], "--expires"),
    (["keys", "create", "--name", "x", "--expires", "2001-01-01"], "--expires"),
    (["keys", "create", "--name", "x", "--ip", "10.0.0.0/33"], "--ip"),
    (["keys", "create", "--name", "x", "--ip", "10.0.0.1,,10.0.0.2"], "--ip"),
    (["keys", "create", "--name", ""], "--name"),
    (["keys", "create"], "--name"),
    (["keys", "revoke", "sk-nope"], "sk-nope"),
    (["keys", "revoke", "key_0000000000000000"], "key_0000000000000000"),
    (["keys", "topup", "sk-nope", "--usd", "1"], "sk-nope"),
    (["keys", "topup", "cfg-test", "--usd", "1"], "unlimited"),
    (["keys", "topup", "cfg-test", "--usd", "-5"], "--usd"),
    (["keys", "topup", "cfg-test", "--usd", "0"], "--usd"),
    (["usage", "--since", "2024-02-30"], "--since"),
    (["usage", "--key", "sk-nope"], "sk-nope"),
    (["keys", "frobnicate"], "frobnicate"),
])
async def test_bad_arguments_exit_2_with_one_line(config, relay, args, names):
    before = key_table(relay)
    at = 1 if args[0] == "usage" else 2  # after the (sub)command
    run = await cli(*args[:at], "--config", str(config), *args[at:])
    assert run.code == 2, (run.code, run.out, run.err)
    assert run.out == ""
    assert len(run.err.strip().splitlines()) == 1, run.err
    assert names in run.err and "Traceback" not in run.err
    assert key_table(relay) == before  # nothing was written


async def test_bad_config_exits_2(tmp_path):
    missing = await cli("keys", "list", "--config", str(tmp_path / "nope.yaml"))
    assert missing.code == 2 and len(missing.err.splitlines()) == 1 and "nope.yaml" in missing.err
    not_a_db = tmp_path / "text.db"
    not_a_db.write_text("this is not a database\n" * 100)
    for database in (tmp_path / "no-such-dir" / "relay.db", not_a_db):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"database: {database}\n")
        run = await cli("keys", "create", "--config", str(bad), "--name", "x")
        assert run.code == 2 and len(run.err.splitlines()) == 1 and "database" in run.err, run.err
        assert "Traceback" not in run.err and run.out == ""
