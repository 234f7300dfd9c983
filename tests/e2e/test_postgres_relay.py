"""A relay and the CLI on a real PostgreSQL database: requests land in its ledger, keys made through the admin
API or the CLI (a subprocess) work at once, and revoking, topping up and the usage summary work as on SQLite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import yaml

from tests.conftest import CLIENT_KEY, Relay, RelayFactory, Upstream, relay_config
from tests.e2e.test_cli import cli, create, field
from tests.pg import pg_url  # noqa: F401 - fixture

ADMIN_TOKEN = "adm-" + "7d1e2a9c" * 4
MSGS = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def relay(relay_factory: RelayFactory, pg_url: str) -> Relay:  # noqa: F811
    return await relay_factory(database=pg_url, admin_token=ADMIN_TOKEN)


@pytest.fixture
def config(tmp_path: Path, upstream: Upstream, pg_url: str, relay: Relay) -> Path:  # noqa: F811
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(relay_config(upstream.url, pg_url)))
    return path


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[asyncpg.Connection]:  # noqa: F811
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def chat(http: aiohttp.ClientSession, relay: Relay, secret: str) -> tuple[int, dict[str, Any]]:
    async with http.post(relay.v1 + "/chat/completions", json={"model": "demo", "messages": MSGS},
                         headers={"Authorization": f"Bearer {secret}"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def until(http: aiohttp.ClientSession, relay: Relay, secret: str, status: int, within: float = 1.0) -> int:
    deadline = time.monotonic() + within
    while True:
        got, _ = await chat(http, relay, secret)
        if got == status or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.02)


async def ledger(pg: asyncpg.Connection, n: int, timeout: float = 5.0) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while len(rows := await pg.fetch("SELECT * FROM usage ORDER BY id")) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return rows


async def test_requests_land_in_the_postgres_ledger(relay: Relay, http: aiohttp.ClientSession,
                                                     pg: asyncpg.Connection) -> None:
    for _ in range(3):
        status, body = await chat(http, relay, CLIENT_KEY)
        assert status == 200, body
    rows = await ledger(pg, 3)
    assert len(rows) == 3
    assert {(r["key_id"], r["model"], r["status"], r["end_reason"]) for r in rows} == {("cfg-test", "demo", 200, "ok")}
    assert all(r["cost_usd"] > 0 and r["prompt_tokens"] > 0 for r in rows)
    spent = await pg.fetchval("SELECT spent_usd FROM keys WHERE id = 'cfg-test'")
    assert spent == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-12)


async def test_a_key_created_through_the_admin_api_works(relay: Relay, http: aiohttp.ClientSession,
                                                         pg: asyncpg.Connection) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(relay.url + "/admin/keys", json={"name": "via-admin", "quota_usd": 1}, headers=admin) as resp:
        assert resp.status == 201, await resp.text()
        made = await resp.json()
    status, body = await chat(http, relay, made["key"])
    assert status == 200, body
    rows = await ledger(pg, 1)
    assert [r["key_id"] for r in rows] == [made["id"]]
    stored = await pg.fetchrow("SELECT name, granted_usd, key_hash FROM keys WHERE id = $1", made["id"])
    assert stored["name"] == "via-admin" and stored["granted_usd"] == 1.0 and made["key"] not in stored["key_hash"]
    async with http.post(relay.url + f"/admin/keys/{made['id']}/revoke", headers=admin) as resp:
        assert resp.status == 200, await resp.text()
    assert (await chat(http, relay, made["key"]))[0] == 401


async def test_cli_keys_and_usage_on_postgres(config: Path, relay: Relay, http: aiohttp.ClientSession) -> None:
    secret, run = await create(config, "--name", "cli-made", "--quota", "0", "--rpm", "600")
    key_id = field(run, "id")
    assert await until(http, relay, secret, 429) == 429  # no balance yet: the relay sees the key from PostgreSQL
    topped = await cli("keys", "topup", "--config", str(config), secret[:7], "--usd", "2")
    assert topped.code == 0 and "granted $2.0000" in topped.out, topped.err
    assert await until(http, relay, secret, 200) == 200
    assert await until(http, relay, secret, 200) == 200

    listing = await cli("keys", "list", "--config", str(config), "--json")
    assert listing.code == 0, listing.err
    keys = {k["id"]: k for k in map(orjson.loads, listing.lines)}
    assert keys[key_id]["name"] == "cli-made" and keys[key_id]["granted_usd"] == 2.0 and keys[key_id]["rpm"] == 600
    assert set(keys) == {key_id, "cfg-test"}

    today = datetime.now(UTC).date().isoformat()
    rows: list[dict[str, Any]] = []
    for _ in range(50):
        usage = await cli("usage", "--config", str(config), "--key", key_id, "--json")
        assert usage.code == 0, usage.err
        rows = [orjson.loads(line) for line in usage.lines]
        if rows and rows[0]["requests"] >= 2:
            break
        await asyncio.sleep(0.1)
    assert [(r["key"], r["model"], r["day"]) for r in rows] == [(key_id, "demo", today)]
    assert rows[0]["ok"] >= 2 and rows[0]["cost_usd"] > 0
    table = await cli("usage", "--config", str(config))
    assert table.code == 0 and any(line.startswith(key_id) for line in table.lines)

    revoked = await cli("keys", "revoke", "--config", str(config), key_id)
    assert revoked.code == 0 and "revoked" in revoked.out, revoked.err
    assert await until(http, relay, secret, 401) == 401
    unknown = await cli("keys", "revoke", "--config", str(config), "sk-nope")
    assert unknown.code == 2 and len(unknown.err.strip().splitlines()) == 1 and "sk-nope" in unknown.err
