"""End to end: reasoning and prompt caching through an `anthropic` channel, with the official openai SDK as the
client and the fake Messages API (which thinks when asked and checks thinking blocks as the real API does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import CLIENT_KEY, Relay, wait_ledger
from tests.e2e.test_anthropic_channel import TOOLS, Claude
from tests.fakes import anthropic_upstream as fake

MODEL = "claude-sonnet-4-5"
ADAPTIVE = "claude-opus-4-7"
EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture
async def claude(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Claude:
    app = fake.build_app(fake.FakeOptions(input_tokens=25))
    return Claude(await aiohttp_server(app), app)


@pytest.fixture
async def relay(relay_factory: Any, claude: Claude) -> Relay:
    return await relay_factory(  # type: ignore[no-any-return]
        channels=[{"name": "claude", "type": "anthropic", "base_url": claude.url, "keys": ["ak-1"],
                   "models": [MODEL, ADAPTIVE]}],
        prices={MODEL: {"input": 3, "cached_input": 0.3, "cache_write": 3.75, "output": 15},
                ADAPTIVE: {"input": 5, "output": 25}},
        reasoning={"budgets": {"high": 16000}},
    )


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


async def test_reasoning_effort_comes_back_as_reasoning_content(client: openai.AsyncOpenAI, claude: Claude) -> None:
    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], reasoning_effort="high", temperature=0.2,
        max_tokens=1000,
    )
    msg: Any = resp.choices[0].message
    assert msg.content == fake.TEXT
    assert msg.reasoning_content == fake.THINKING
    assert msg.thinking_blocks == [{"type": "thinking", "thinking": fake.THINKING, "signature": fake.signature(fake.THINKING)}]
    sent = claude.records[0].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16000}  # the config's budget for high
    assert sent["max_tokens"] == 17000 and "temperature" not in sent


async def test_adaptive_models_get_adaptive_thinking(client: openai.AsyncOpenAI, claude: Claude) -> None:
    await client.chat.completions.create(model=ADAPTIVE, messages=[{"role": "user", "content": "Hi"}],
                                         reasoning_effort="low")
    sent = claude.records[0].body
    assert sent["thinking"] == {"type": "adaptive"} and sent["output_config"] == {"effort": "low"}


async def test_reasoning_in_stream_deltas(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], reasoning_effort="high", stream=True,
    )
    reasoning, text, signatures = "", "", []
    async for chunk in stream:
        delta: Any = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        text += delta.content or ""
        for block in getattr(delta, "thinking_blocks", None) or ():
            if block.get("signature"):
                signatures.append(block["signature"])
    assert reasoning == fake.THINKING and text == fake.TEXT
    assert signatures == [fake.signature(fake.THINKING)]


def _join_stream_blocks(deltas: list[Any]) -> list[dict[str, Any]]:
    """Thinking blocks from stream deltas: partial texts joined up to the delta that carries the signature."""
    blocks: list[dict[str, Any]] = []
    open_block: dict[str, Any] | None = None
    for block in deltas:
        if block["type"] == "redacted_thinking":
            blocks.append(block)
            continue
        if open_block is None:
            open_block = {"type": "thinking", "thinking": ""}
            blocks.append(open_block)
        open_block["thinking"] += block.get("thinking") or ""
        if block.get("signature"):
            open_block["signature"] = block["signature"]
            open_block = None
    return blocks


@pytest.mark.parametrize("stream", [False, True])
async def test_two_turn_tool_use_sends_thinking_back_first(
    client: openai.AsyncOpenAI, claude: Claude, relay: Relay, stream: bool
) -> None:
    claude.app[fake.OPTIONS].redacted = True
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    args: dict[str, Any] = {"model": MODEL, "tools": TOOLS, "reasoning_effort": "medium"}
    if stream:
        calls: dict[int, Any] = {}
        parts: list[Any] = []
        content = ""
        async for chunk in await client.chat.completions.create(messages=messages, stream=True, **args):
            delta: Any = chunk.choices[0].delta
            content += delta.content or ""
            parts += getattr(delta, "thinking_blocks", None) or []
            for tc in delta.tool_calls or ():
                c = calls.setdefault(tc.index, {"id": tc.id, "type": "function", "function": {"name": "", "arguments": ""}})
                c["function"]["name"] += (tc.function.name or "") if tc.function else ""
                c["function"]["arguments"] += (tc.function.arguments or "") if tc.function else ""
        assistant = {"role": "assistant", "content": content, "tool_calls": list(calls.values()),
                     "thinking_blocks": _join_stream_blocks(parts)}
    else:
        first = await client.chat.completions.create(messages=messages, **args)
        assistant = first.choices[0].message.model_dump(exclude_none=True)
    assert assistant["thinking_blocks"] == [
        {"type": "thinking", "thinking": fake.THINKING, "signature": fake.signature(fake.THINKING)},
        {"type": "redacted_thinking", "data": fake.REDACTED}]
    call_id = assistant["tool_calls"][0]["id"]
    messages += [assistant, {"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"}]
    second = await client.chat.completions.create(messages=messages, **args)
    assert second.choices[0].message.content == "The tool said: 18C and sunny"
    turn = claude.records[1].body["messages"][1]["content"]
    assert [b["type"] for b in turn] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert claude.records[1].status == 200


async def test_tool_use_without_its_thinking_is_refused_by_the_upstream(client: openai.AsyncOpenAI) -> None:
    """What the fake checks is what the real API checks: the relay passes its 400 on, in OpenAI's shape."""
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 2048}}  # the client's own: sent as it is
    first = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                                 tools=TOOLS, extra_body=thinking)
    assistant: Any = first.choices[0].message.model_dump(exclude_none=True)
    del assistant["thinking_blocks"]
    call_id = assistant["tool_calls"][0]["id"]
    with pytest.raises(openai.BadRequestError, match="must start with a thinking block"):
        await client.chat.completions.create(
            model=MODEL, tools=TOOLS, extra_body=thinking,
            messages=[{"role": "user", "content": "Weather?"}, assistant,
                      {"role": "tool", "tool_call_id": call_id, "content": "18C"}],
        )


async def test_effort_without_thinking_blocks_sent_back_goes_without_thinking(client: openai.AsyncOpenAI,
                                                                               claude: Claude) -> None:
    """A client that drops the blocks (as Responses clients' reasoning items are dropped) still gets its answer."""
    first = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                                 tools=TOOLS, reasoning_effort="low")
    assistant: Any = first.choices[0].message.model_dump(exclude_none=True)
    del assistant["thinking_blocks"]
    second = await client.chat.completions.create(
        model=MODEL, tools=TOOLS, reasoning_effort="low",
        messages=[{"role": "user", "content": "Weather?"}, assistant,
                  {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "18C"}],
    )
    assert second.choices[0].message.content == "The tool said: 18C"
    assert "thinking" in claude.records[0].body and "thinking" not in claude.records[1].body


async def test_cache_control_reaches_the_upstream_blocks(client: openai.AsyncOpenAI, claude: Claude) -> None:
    tools: Any = [{**TOOLS[0], "cache_control": EPHEMERAL}]
    await client.chat.completions.create(
        model=MODEL, tools=tools, tool_choice="none",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "A long, stable system prompt.", "cache_control": EPHEMERAL}]},
            {"role": "user", "content": [{"type": "text", "text": "Document text...", "cache_control": EPHEMERAL},
                                         {"type": "text", "text": "Question?"}]},
        ],
    )
    sent = claude.records[0].body
    assert sent["system"] == [{"type": "text", "text": "A long, stable system prompt.", "cache_control": EPHEMERAL}]
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "Document text...", "cache_control": EPHEMERAL}, {"type": "text", "text": "Question?"}]
    assert sent["tools"][0]["cache_control"] == EPHEMERAL


async def test_cache_reads_and_writes_billed_at_their_prices(client: openai.AsyncOpenAI, claude: Claude,
                                                             relay: Relay) -> None:
    opts = claude.app[fake.OPTIONS]
    opts.input_tokens, opts.cache_creation_input_tokens, opts.cache_read_input_tokens = 1000, 200_000, 0
    # (a max_tokens that reserves enough: a charge never goes past the request's reserved worst case)
    hi: Any = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100_000}
    first = await client.chat.completions.create(**hi)
    opts.cache_creation_input_tokens, opts.cache_read_input_tokens = 0, 200_000
    second = await client.chat.completions.create(**hi)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == 201_000  # OpenAI's: cache included
    assert first.usage.prompt_tokens_details is not None and first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None and second.usage.prompt_tokens_details.cached_tokens == 200_000
    rows = await wait_ledger(relay.database, 2)
    by_write = {r["cache_write_tokens"]: r for r in rows}
    written, read = by_write[200_000], by_write[0]
    assert (written["cache_read_tokens"], read["cache_read_tokens"]) == (0, 200_000)
    out = written["completion_tokens"]
    # 1,000 input at $3, 200,000 written at $3.75 (not $3) / read at $0.30 (not $3), output at $15, per 1M
    assert round(written["cost_usd"], 2) == round((1000 * 3 + 200_000 * 3.75 + out * 15) / 1e6, 2) == 0.75
    assert round(read["cost_usd"], 2) == round((1000 * 3 + 200_000 * 0.3 + out * 15) / 1e6, 2) == 0.06


async def test_messages_passthrough_bills_cache_writes(relay: Relay, claude: Claude) -> None:
    """/v1/messages to an anthropic channel goes through untouched, and its cache fields are still billed."""
    import anthropic

    opts = claude.app[fake.OPTIONS]
    opts.input_tokens, opts.cache_creation_input_tokens, opts.cache_read_input_tokens = 1000, 100_000, 300_000
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        msg = await c.messages.create(model=MODEL, max_tokens=100_000, messages=[{"role": "user", "content": "Hi"}],
                                      system=[{"type": "text", "text": "Stable prefix", "cache_control": EPHEMERAL}])
    assert (msg.usage.input_tokens, msg.usage.cache_creation_input_tokens, msg.usage.cache_read_input_tokens) == (
        1000, 100_000, 300_000)
    assert claude.records[0].body["system"][0]["cache_control"] == EPHEMERAL
    [row] = await wait_ledger(relay.database, 1)
    assert (row["prompt_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (401_000, 300_000, 100_000)
    out = row["completion_tokens"]
    assert round(row["cost_usd"], 2) == round((1000 * 3 + 100_000 * 3.75 + 300_000 * 0.3 + out * 15) / 1e6, 2) == 0.47
