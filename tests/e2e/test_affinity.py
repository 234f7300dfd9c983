"""Prompt-cache stickiness, routing by endpoint in a mixed pool, and /v1/models' fields, through real HTTP
with the official openai SDK against the fake upstreams (the fake records which account each call reached)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from bench.fake_upstream import status
from tests.conftest import ACCOUNTS, CLIENT_KEY, Relay, Upstream
from tests.fakes import anthropic_upstream as claude_fake

MSGS: list[Any] = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


def accounts_reached(upstream: Upstream, since: int = 0) -> Counter[str]:
    return Counter(r.key for r in upstream.records[since:] if r.path.endswith("/chat/completions"))


async def sticky_metric(relay: Relay) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(relay.url + "/metrics") as resp:
        text = await resp.text()
    return {
        s.labels["result"]: s.value for f in text_string_to_metric_families(text) if f.name == "relay_sticky_routing"
        for s in f.samples if s.name.endswith("_total")
    }


async def test_one_prompt_cache_key_keeps_one_account(relay: Relay, upstream: Upstream, client: openai.AsyncOpenAI) -> None:
    for _ in range(100):
        await client.chat.completions.create(model="demo", messages=MSGS, extra_body={"prompt_cache_key": "repo-42"})
    reached = accounts_reached(upstream)
    assert len(reached) == 1 and sum(reached.values()) == 100, reached
    assert await sticky_metric(relay) == {"hit": 99.0, "miss": 1.0}
    # without the field: plain round-robin over all three
    before = len(upstream.records)
    for _ in range(30):
        await client.chat.completions.create(model="demo", messages=MSGS)
    assert accounts_reached(upstream, before) == Counter({a: 10 for a in ACCOUNTS})


async def test_different_keys_spread_over_every_account(upstream: Upstream, client: openai.AsyncOpenAI) -> None:
    owners: dict[str, set[str]] = {}
    for i in range(10):
        for _ in range(3):
            before = len(upstream.records)
            await client.chat.completions.create(model="demo", messages=MSGS, user=f"end-user-{i}")
            owners.setdefault(f"end-user-{i}", set()).update(accounts_reached(upstream, before))
    assert all(len(v) == 1 for v in owners.values()), owners  # each value kept its account
    assert set().union(*owners.values()) == set(ACCOUNTS)  # and together they use all three


async def test_the_sticky_account_cooling_moves_the_key_to_another(upstream: Upstream, client: openai.AsyncOpenAI) -> None:
    body = {"prompt_cache_key": "agent-session"}
    await client.chat.completions.create(model="demo", messages=MSGS, extra_body=body)
    first = upstream.records[-1].key
    assert first is not None
    upstream.script[first] = [status(429, retry_after=30)]
    for _ in range(20):  # the first of these meets the 429 and fails over; the rest follow the new binding
        await client.chat.completions.create(model="demo", messages=MSGS, extra_body=body)
    after = [r.key for r in upstream.records if r.path.endswith("/chat/completions")][1:]
    assert after[0] == first  # the 429
    moved = set(after[1:])
    assert len(moved) == 1 and first not in moved, after


@pytest.fixture
async def claude(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(claude_fake.build_app(claude_fake.FakeOptions()))


async def test_a_mixed_pool_serves_an_endpoint_only_one_channel_type_has(
    relay_factory: Any, upstream: Upstream, claude: TestServer,
) -> None:
    relay = await relay_factory(
        channels=[
            {"name": "claude", "type": "anthropic", "base_url": str(claude.make_url("")).rstrip("/"),
             "keys": ["ak-1", "ak-2"], "models": ["shared-model", "claude-only"]},
            {"name": "oai", "type": "openai", "base_url": upstream.url, "keys": ["acct-0"], "models": ["shared-model"]},
        ],
        prices={"shared-model": {"input": 1, "output": 2}, "claude-only": {"input": 1, "output": 2}},
    )
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        for _ in range(6):  # embeddings: only the openai channel has them, so every request lands there
            got = await c.embeddings.create(model="shared-model", input="hello")
            assert got.data and got.data[0].embedding
        for _ in range(6):  # chat: both channel types serve it, the rotation uses both
            await c.chat.completions.create(model="shared-model", messages=MSGS)
        with pytest.raises(openai.BadRequestError) as e:  # a model only Messages-API channels serve
            await c.embeddings.create(model="claude-only", input="hello")
        assert e.value.code == "unsupported_endpoint" and "claude-only" in e.value.message
    assert [r.key for r in upstream.records if r.path.endswith("/embeddings")] == ["acct-0"] * 6


async def test_models_carry_their_vendor_and_endpoint_types(relay_factory: Any, upstream: Upstream) -> None:
    relay = await relay_factory(
        channels=[
            {"name": "fake", "type": "openai", "base_url": upstream.url, "keys": ["acct-0"],
             "models": ["demo", "text-embedding-3-small", "dall-e-3"]},
            {"name": "compat", "type": "openai", "base_url": upstream.url, "keys": ["acct-1"], "models": ["deepseek-chat"],
             "vendor": "deepseek", "responses": False},
        ],
        prices={"demo": {"input": 1, "output": 2}, "text-embedding-3-small": {"input": 0.02},
                "dall-e-3": {"image": 0.04}, "deepseek-chat": {"input": 0.27, "output": 1.1}},
    )
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        models = {m.id: m.model_dump() for m in (await c.models.list()).data}
        one = (await c.models.retrieve("deepseek-chat")).model_dump()
    assert models["demo"]["owned_by"] == "openai"
    assert models["demo"]["supported_endpoint_types"] == ["openai", "anthropic", "openai-response", "gemini"]
    assert models["text-embedding-3-small"]["supported_endpoint_types"] == ["embeddings", "gemini"]
    assert models["dall-e-3"]["supported_endpoint_types"] == ["image-generation"]
    assert one["owned_by"] == "deepseek"
    # an upstream without a Responses API still gets Responses clients, translated onto its chat
    assert one["supported_endpoint_types"] == ["openai", "anthropic", "openai-response", "gemini"]
