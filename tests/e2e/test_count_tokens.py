"""End to end: the anthropic SDK's messages.count_tokens, passed through to an `anthropic` channel (the fake's
count endpoint) and counted by the relay for an `openai` channel."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp.test_utils import TestServer

from relay.tokens import count_text
from relay.tokens_messages import image_tokens
from tests.conftest import ACCOUNTS, CLIENT_KEY, MODELS, Relay, Upstream, wait_ledger
from tests.e2e.test_anthropic_channel import Claude
from tests.e2e.test_limits import add_key
from tests.fakes import anthropic_upstream as fake

CLAUDE = "claude-relay-test"
GPT = "gpt-4o-mini"
LONG = " ".join(f"The {i}th lighthouse keeper of Brittany wrote about storms, tides and ships." for i in range(60))


@pytest.fixture
async def claude(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Claude:
    app = fake.build_app()
    return Claude(await aiohttp_server(app), app)


@pytest.fixture
async def relay(relay_factory: Any, claude: Claude, upstream: Upstream) -> Relay:
    return await relay_factory(  # type: ignore[no-any-return]
        channels=[
            {"name": "claude", "type": "anthropic", "base_url": claude.url, "keys": ["ak-1"], "models": [CLAUDE]},
            {"name": "fake", "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS), "models": MODELS},
        ],
        prices={CLAUDE: {"input": 3, "output": 15}},
    )


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


def _png(width: int, height: int) -> str:
    """A real (tiny-bodied) PNG of this size, base64."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"".join(b"\0" + b"\0" * width for _ in range(height)))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")).decode()


async def test_passthrough_to_an_anthropic_channel(client: anthropic.AsyncAnthropic, claude: Claude, relay: Relay) -> None:
    messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
    got = await client.messages.count_tokens(model=CLAUDE, messages=messages, system="Be brief.")
    [rec] = claude.records
    assert got.input_tokens == fake.count_tokens(rec.body)
    assert rec.body == {"model": CLAUDE, "messages": messages, "system": "Be brief."}
    assert rec.headers["x-api-key"] == "ak-1" and "authorization" not in rec.headers
    [row] = await wait_ledger(relay.database, 1)
    assert row["endpoint"] == "messages/count_tokens" and row["status"] == 200
    assert row["cost_usd"] == 0 and row["channel"] == "claude"


async def test_beta_query_and_bearer_auth_pass(relay: Relay, claude: Claude) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{relay.url}/v1/messages/count_tokens?beta=true", json={
            "model": CLAUDE, "messages": [{"role": "user", "content": "Hi"}],
        }, headers={"Authorization": f"Bearer {CLIENT_KEY}", "anthropic-version": "2023-06-01"}) as r:
            assert r.status == 200
            assert set(await r.json()) == {"input_tokens"}


async def test_counted_locally_for_an_openai_channel(client: anthropic.AsyncAnthropic, upstream: Upstream,
                                                     relay: Relay) -> None:
    got = await client.messages.count_tokens(model=GPT, messages=[{"role": "user", "content": LONG}])
    own = count_text(LONG, GPT)
    assert abs(got.input_tokens - own) <= 0.05 * own
    assert upstream.records == []  # nothing went upstream
    [row] = await wait_ledger(relay.database, 1)
    assert row["endpoint"] == "messages/count_tokens" and row["cost_usd"] == 0 and row["status"] == 200


async def test_local_count_takes_system_tools_and_images(client: anthropic.AsyncAnthropic) -> None:
    base = await client.messages.count_tokens(model=GPT, messages=[{"role": "user", "content": "Describe."}])
    tool: Any = {"name": "get_weather", "description": "Current weather for a city, in Celsius",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    more = await client.messages.count_tokens(
        model=GPT, system=LONG, tools=[tool],
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _png(300, 200)}},
            {"type": "text", "text": "Describe."}]}],
    )
    assert more.input_tokens - base.input_tokens >= count_text(LONG, GPT) + image_tokens(300, 200) + 10
    assert image_tokens(300, 200) == 80  # (300 * 200) / 750


async def test_counts_draw_on_rpm_not_tpm(relay: Relay) -> None:
    """A key with a tpm far below the prompt can count it; its rpm still applies."""
    secret = await add_key(relay.database, rpm=3, tpm=50)
    body = {"model": GPT, "messages": [{"role": "user", "content": LONG}]}
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(40):  # until the relay has picked up the new key
            async with http.post(f"{relay.url}/v1/messages/count_tokens", json=body, headers={"x-api-key": secret}) as r:
                if r.status != 401:
                    statuses.append(r.status)
                    assert (await r.json())["input_tokens"] > 500
                    break
            await asyncio.sleep(0.05)
        for _ in range(3):
            async with http.post(f"{relay.url}/v1/messages/count_tokens", json=body, headers={"x-api-key": secret}) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert (await r.json())["error"]["type"] == "rate_limit_error"
    assert statuses == [200, 200, 200, 429]


async def test_errors_are_anthropic_shaped(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        await client.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
