"""End to end: the anthropic SDK on /v1/messages to an `openai` channel: the upstream's reasoning_content comes
back as a thinking block (whole and streamed), and `thinking` goes over as reasoning_effort where the model
takes one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import orjson
import pytest

from bench.fake_upstream import REASONING
from tests.conftest import ACCOUNTS, CLIENT_KEY, Relay, Upstream

R1 = "deepseek-reasoner"
O3 = "o3-mini"


@pytest.fixture
async def relay(relay_factory: Any, upstream: Upstream) -> Relay:
    return await relay_factory(  # type: ignore[no-any-return]
        channels=[{"name": "fake", "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS), "models": [R1, O3]}],
        prices={R1: {"input": 0.55, "output": 2.19}, O3: {"input": 1.1, "output": 4.4}},
    )


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


async def test_reasoning_content_becomes_a_thinking_block(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model=R1, max_tokens=200, messages=[{"role": "user", "content": "Hi"}])
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == REASONING  # type: ignore[union-attr]
    assert msg.content[1].text.startswith("Hello!")  # type: ignore[union-attr]


async def test_streamed_reasoning_becomes_thinking_deltas(client: anthropic.AsyncAnthropic) -> None:
    kinds: list[str] = []
    async with client.messages.stream(model=R1, max_tokens=200, messages=[{"role": "user", "content": "Hi"}]) as s:
        async for event in s:
            if event.type == "content_block_start":
                kinds.append(event.content_block.type)
        final = await s.get_final_message()
    assert kinds == ["thinking", "text"]
    assert final.content[0].thinking == REASONING  # type: ignore[union-attr]
    assert final.content[1].text.startswith("Hello!")  # type: ignore[union-attr]


@pytest.mark.parametrize("model, thinking, effort", [
    (O3, {"type": "enabled", "budget_tokens": 20000}, "high"),
    (O3, {"type": "enabled", "budget_tokens": 2048}, "low"),
    (R1, {"type": "enabled", "budget_tokens": 20000}, None),  # not a model that takes reasoning_effort
])
async def test_thinking_becomes_reasoning_effort(client: anthropic.AsyncAnthropic, upstream: Upstream,
                                                 model: str, thinking: Any, effort: str | None) -> None:
    await client.messages.create(model=model, max_tokens=30000, thinking=thinking,
                                 messages=[{"role": "user", "content": "Hi"}])
    sent = orjson.loads(upstream.records[-1].body)
    assert sent.get("reasoning_effort") == effort and "thinking" not in sent
