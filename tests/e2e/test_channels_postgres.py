"""Channels at run time with two relay processes on one PostgreSQL database: a channel added, changed,
turned off or removed through one process's admin API reaches the other within a second, and no row of
the database holds an upstream key in clear. Without PostgreSQL these tests skip, saying why (CI=true: fail).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import yaml

from tests.pg import pg_database
from tests.procs import ROOT, Processes

ADMIN_TOKEN = "adm-" + "3d9b6f21" * 4
CLIENT_KEY = "sk-pgchan-" + "c0ffee12" * 5
SECRET = "relay-secret-for-pg-tests-" + "fedcba9876543210" * 2
CANARY = "sk-canary-pg-" + "Hk2Jr7Tn" * 5
MSGS = [{"role": "user", "content": "Hello"}]


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


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               key: str = ADMIN_TOKEN) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    async with http.request(method, url, data=data, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def chat(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, Any]:
    return await call(http, "POST", url + "/v1/chat/completions", {"model": model, "messages": MSGS}, CLIENT_KEY)


async def within(seconds: float, check: Any) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        await asyncio.sleep(0.02)


async def test_a_change_through_one_process_reaches_the_other_within_a_second(
    tmp_path, processes, database, monkeypatch,
):
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    upstream = await processes.fake_upstream()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "shutdown_grace": 2},
        "database": database, "admin_token": ADMIN_TOKEN,
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream, "keys": ["acct-0"], "models": ["demo"]}],
        "prices": {"demo": {"free": True}, "live-model": {"free": True}, "live-2": {"free": True}},
        "log_level": "warning",
    }))
    _, a = await processes.relay(config, log="a.log")
    _, b = await processes.relay(config, log="b.log")
    async with aiohttp.ClientSession() as http:
        async def serves(url: str, model: str, status: int = 200) -> bool:
            return (await chat(http, url, model))[0] == status

        assert await serves(b, "live-model", 404)
        status, body = await call(http, "POST", a + "/admin/channels", {
            "name": "live", "base_url": upstream, "keys": [CANARY, CANARY + "-2"], "models": ["live-model"]})
        assert status == 201, body
        await within(1.0, lambda: serves(b, "live-model"))
        status, body = await call(http, "PATCH", a + "/admin/channels/live", {"models": ["live-2"]})
        assert status == 200, body
        await within(1.0, lambda: serves(b, "live-2"))
        assert await serves(b, "live-model", 404)
        status, body = await call(http, "PATCH", a + "/admin/channels/live", {"enabled": False})
        assert status == 200 and body["enabled"] is False
        await within(1.0, lambda: serves(b, "live-2", 404))
        assert (await call(http, "PATCH", a + "/admin/channels/live", {"enabled": True}))[0] == 200
        await within(1.0, lambda: serves(b, "live-2"))
        # B lists what A added, with the same prefixes (B opens the keys with the same RELAY_SECRET)
        status, listed = await call(http, "GET", b + "/admin/channels/live")
        assert status == 200 and [x["prefix"] for x in listed["accounts"]] == [CANARY[:7], CANARY[:7]]

        conn = await asyncpg.connect(database)
        try:  # every row as a dump would hold it
            dump = "\n".join(r[0] for r in await conn.fetch("SELECT row_to_json(c)::text FROM channels c"))
        finally:
            await conn.close()
        assert "live-2" in dump and CANARY not in dump and CANARY[13:] not in dump

        assert (await call(http, "DELETE", b + "/admin/channels/live"))[0] == 200
        await within(1.0, lambda: serves(a, "live-2", 404))
        assert await serves(a, "demo")


async def test_db_copy_takes_the_api_channels_along_still_sealed(tmp_path, processes, database, monkeypatch):
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    upstream = await processes.fake_upstream()
    raw = {
        "server": {"host": "127.0.0.1", "shutdown_grace": 2}, "admin_token": ADMIN_TOKEN,
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream, "keys": ["acct-0"], "models": ["demo"]}],
        "prices": {"demo": {"free": True}, "live-model": {"free": True}}, "log_level": "warning",
    }
    sqlite_config = tmp_path / "sqlite.yaml"
    sqlite_config.write_text(yaml.safe_dump({**raw, "database": str(tmp_path / "relay.db")}))
    proc, url = await processes.relay(sqlite_config, log="sqlite.log")
    async with aiohttp.ClientSession() as http:
        status, _ = await call(http, "POST", url + "/admin/channels", {
            "name": "live", "base_url": upstream, "keys": [CANARY], "models": ["live-model"]})
        assert status == 201
    proc.terminate()
    proc.wait(timeout=20)
    pg_config = tmp_path / "pg.yaml"
    pg_config.write_text(yaml.safe_dump({**raw, "database": database}))
    for expected in ("channels: 1 copied, 0 already there", "channels: 0 copied, 1 already there"):
        done = subprocess.run(
            [sys.executable, "-m", "relay", "db", "copy", "--from", str(tmp_path / "relay.db"), "--config", str(pg_config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0 and done.stdout.strip().endswith(expected), (done.stdout, done.stderr)
    _, pg = await processes.relay(pg_config, log="pg.log")
    async with aiohttp.ClientSession() as http:
        status, body = await chat(http, pg, "live-model")
        assert status == 200, body
