"""The balance endpoints as NextChat's balance widget calls them: a key's granted USD and what it spent in a
window, from the ledger, with and without /v1, for a limited and an unlimited key; a key sees only its own."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from relay.auth import new_secret
from relay.config import hash_key
from relay.store import Store
from relay.types import KeyRecord
from tests.conftest import RelayFactory, wait_ledger
from tests.procs import auth

PRICES = {"demo": {"input": 0, "output": 125000}}  # 8 output tokens (the fake's answer) cost $1 exactly
EXPIRES = 1_924_905_600.0  # 2031-01-01T00:00:00Z


async def add_key(database: str, **fields: Any) -> tuple[str, KeyRecord]:
    store = Store(database)
    await store.open()
    try:
        secret = new_secret()
        record = KeyRecord(id="key_" + uuid.uuid4().hex[:16], name="balance", key_hash=hash_key(secret),
                           prefix=secret[:7], **fields)
        return secret, await store.create_key(record)
    finally:
        await store.close()


async def chat(http: aiohttp.ClientSession, url: str, secret: str) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    async with http.post(url + "/v1/chat/completions", json=body, headers=auth(secret)) as resp:
        assert resp.status == 200, await resp.text()


def nextchat_window() -> str:
    """NextChat's ChatGPTApi.usage(): the first of this month to tomorrow."""
    now = datetime.now(UTC)
    tomorrow = now + timedelta(days=1)
    return f"start_date={now:%Y-%m}-01&end_date={tomorrow:%Y-%m-%d}"


async def get(http: aiohttp.ClientSession, url: str, secret: str | None, **headers: str) -> tuple[int, Any, Any]:
    async with http.get(url, headers={**(auth(secret) if secret else {}), **headers}) as resp:
        return resp.status, orjson.loads(await resp.read()), resp.headers


async def wait_key(http: aiohttp.ClientSession, url: str, secret: str) -> None:
    for _ in range(200):
        async with http.get(url + "/v1/models", headers=auth(secret)) as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the relay did not pick up the key")


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_nextchat_reads_granted_and_spent_for_each_key_alone(
    relay_factory: RelayFactory, http: aiohttp.ClientSession
) -> None:
    relay = await relay_factory(prices=PRICES)
    limited, _lk = await add_key(relay.database, granted_usd=10.0, expires_at=EXPIRES)
    unlimited, _ = await add_key(relay.database)
    await wait_key(http, relay.url, limited)
    await wait_key(http, relay.url, unlimited)
    for _ in range(3):
        await chat(http, relay.url, limited)
    await chat(http, relay.url, unlimited)
    await wait_ledger(relay.database, 4)

    for prefix in ("", "/v1"):
        base = relay.url + prefix + "/dashboard/billing"
        status, sub, _ = await get(http, base + "/subscription", limited)
        assert status == 200
        assert sub["object"] == "billing_subscription" and sub["has_payment_method"] is True
        assert sub["hard_limit_usd"] == sub["soft_limit_usd"] == sub["system_hard_limit_usd"] == 10.0
        assert sub["access_until"] == int(EXPIRES)
        status, used, _ = await get(http, f"{base}/usage?{nextchat_window()}", limited)
        assert (status, used) == (200, {"object": "list", "total_usage": 300.0})  # $3 in cents, not the $4 of both

        status, sub, _ = await get(http, base + "/subscription", unlimited)
        assert sub["hard_limit_usd"] == 100_000_000 and sub["access_until"] == 0
        status, used, _ = await get(http, f"{base}/usage?{nextchat_window()}", unlimited)
        assert used["total_usage"] == 100.0

    # the end date is exclusive: a window ending today holds nothing spent today
    today = datetime.now(UTC)
    status, used, _ = await get(
        http, f"{relay.url}/dashboard/billing/usage?start_date={today - timedelta(days=3):%Y-%m-%d}"
        f"&end_date={today:%Y-%m-%d}", limited,
    )
    assert (status, used["total_usage"]) == (200, 0)


async def test_bad_dates_and_keys_get_openai_errors(relay_factory: RelayFactory, http: aiohttp.ClientSession) -> None:
    relay = await relay_factory(prices=PRICES)
    secret, _ = await add_key(relay.database, granted_usd=1.0)
    await wait_key(http, relay.url, secret)
    usage = relay.url + "/v1/dashboard/billing/usage"
    for query, param in [("start_date=2026-13-01&end_date=2026-12-01", "start_date"), ("start_date=2026-01-01", "end_date"),
                         ("start_date=2026-02-01&end_date=2026-01-01", "end_date"),
                         ("start_date=20260101&end_date=2026-02-01", "start_date")]:
        status, body, _ = await get(http, f"{usage}?{query}", secret)
        assert status == 400, query
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["param"] == param
    status, body, _ = await get(http, relay.url + "/dashboard/billing/subscription", None)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    status, body, _ = await get(http, relay.url + "/dashboard/billing/subscription", "sk-not-a-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


async def test_cors_is_open_for_browser_widgets(relay_factory: RelayFactory, http: aiohttp.ClientSession) -> None:
    relay = await relay_factory(prices=PRICES)
    secret, _ = await add_key(relay.database, granted_usd=2.5)
    await wait_key(http, relay.url, secret)
    url = relay.url + "/dashboard/billing/subscription"
    headers = {"Origin": "https://chat.example", "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "authorization"}
    async with http.options(url, headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    status, sub, got = await get(http, url, secret, Origin="https://chat.example")
    assert status == 200 and sub["hard_limit_usd"] == 2.5
    assert got["Access-Control-Allow-Origin"] == "*"
