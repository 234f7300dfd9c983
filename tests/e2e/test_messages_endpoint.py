"""End to end: the official anthropic SDK on POST /v1/messages, relayed natively to an `anthropic` channel (the
fake Messages API) and translated to an `openai` channel (the fake OpenAI upstream)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import ACCOUNTS, CLIENT_KEY, MODELS, Relay, Upstream, wait_ledger
from tests.e2e.test_anthropic_channel import Claude
from tests.fakes import anthropic_upstream as fake

CLAUDE = "claude-relay-test"
GPT = "gpt-4o-mini"
TOOL: dict[str, Any] = {
    "name": "get_weather", "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}


@pytest.fixture
async def claude(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Claude:
    app = fake.build_app(fake.FakeOptions(input_tokens=25, cache_read_input_tokens=10))
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


async def _openai_text(relay: Relay, model: str) -> str:
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        resp = await c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    return resp.choices[0].message.content or ""


# -- anthropic channel: native ---------------------------------------------------------------------------


async def test_native_message_and_usage(client: anthropic.AsyncAnthropic, claude: Claude, relay: Relay) -> None:
    msg = await client.messages.create(
        model=CLAUDE, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Weather?"}],
        extra_headers={"anthropic-version": "2024-01-01", "anthropic-beta": "tools-2024-05-16"},
    )
    assert msg.content[0].type == "text" and msg.content[0].text == fake.TEXT
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens == 25
    [rec] = claude.records
    assert rec.headers["x-api-key"] == "ak-1" and rec.headers["anthropic-version"] == "2024-01-01"
    assert rec.headers["anthropic-beta"] == "tools-2024-05-16" and "authorization" not in rec.headers
    assert rec.body == {"model": CLAUDE, "max_tokens": 100, "system": "Be brief.",
                        "messages": [{"role": "user", "content": "Weather?"}]}
    [row] = await wait_ledger(relay.database, 1)
    assert row["status"] == 200 and row["usage_source"] == "upstream" and row["endpoint"] == "messages"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (35, msg.usage.output_tokens)
    assert row["channel"] == "claude" and row["cost_usd"] > 0


async def test_native_stream_reassembles(client: anthropic.AsyncAnthropic, relay: Relay) -> None:
    async with client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == fake.TEXT and final.stop_reason == "end_turn"
    [row] = await wait_ledger(relay.database, 1)
    assert row["usage_source"] == "upstream" and row["stream"] == 1 and row["end_reason"] == "ok"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (35, final.usage.output_tokens)


async def test_native_stream_error_is_anthropic_shaped(
    client: anthropic.AsyncAnthropic, claude: Claude, relay: Relay
) -> None:
    claude.script.append(("stream_error", {"type": "overloaded_error", "message": "Overloaded"}))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with client.messages.stream(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            async for _ in stream:
                pass
    [row] = await wait_ledger(relay.database, 1)
    assert row["end_reason"] == "upstream_error"


async def test_native_upstream_error_passes_through(client: anthropic.AsyncAnthropic, claude: Claude) -> None:
    claude.script.append((400, fake.error_body("invalid_request_error", "messages.0.content: bad block")))
    with pytest.raises(anthropic.BadRequestError) as e:
        await client.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["error"] == {"type": "invalid_request_error", "message": "messages.0.content: bad block"}


async def test_bad_input_is_anthropic_shaped(client: anthropic.AsyncAnthropic, relay: Relay, claude: Claude) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        await client.messages.create(model=CLAUDE, max_tokens="many", messages=[])  # type: ignore[arg-type]
    assert e.value.status_code == 400
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as nf:
        await client.messages.create(model="no-such-model", max_tokens=10, messages=[])
    assert nf.value.body["error"]["type"] == "not_found_error"
    assert claude.records == []


async def test_auth_with_x_api_key_or_bearer(relay: Relay, claude: Claude) -> None:
    body = {"model": CLAUDE, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(relay.v1 + "/messages", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:
            ok_status, ok = r.status, await r.json()
        async with http.post(relay.v1 + "/messages", json=body, headers={"x-api-key": "sk-wrong"}) as r:
            bad_status, bad = r.status, await r.json()
    assert ok_status == 200 and ok["type"] == "message"
    assert claude.records[0].headers["anthropic-version"] == "2023-06-01"  # the default when the client sent none
    assert bad_status == 401
    assert bad == {"type": "error", "error": {"type": "authentication_error", "message": "Incorrect API key provided."}}


# -- openai channel: translated ------------------------------------------------------------------------


async def test_translated_message(client: anthropic.AsyncAnthropic, upstream: Upstream, relay: Relay) -> None:
    expected = await _openai_text(relay, GPT)
    msg = await client.messages.create(
        model=GPT, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi"}],
        stop_sequences=["END"],
    )
    assert msg.type == "message" and msg.model == GPT
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == expected  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
    sent = upstream.records[-1].json()
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert sent["max_tokens"] == 100 and sent["stop"] == ["END"]
    rows = await wait_ledger(relay.database, 2)
    assert rows[-1]["usage_source"] == "upstream" and rows[-1]["endpoint"] == "messages"


async def test_translated_stream_ends_with_message_stop(client: anthropic.AsyncAnthropic, relay: Relay) -> None:
    expected = await _openai_text(relay, GPT)
    events = []
    async with client.messages.stream(model=GPT, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]) as s:
        async for ev in s:
            events.append(ev.type)
        final = await s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.content[0].text == expected  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    rows = await wait_ledger(relay.database, 2)
    assert rows[-1]["usage_source"] == "upstream" and rows[-1]["stream"] == 1 and rows[-1]["end_reason"] == "ok"


@pytest.mark.parametrize("stream", [False, True])
async def test_translated_tool_round_trip(
    client: anthropic.AsyncAnthropic, upstream: Upstream, stream: bool
) -> None:
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        async with client.messages.stream(model=GPT, max_tokens=100, messages=ask, tools=[TOOL]) as s:
            first = await s.get_final_message()
    else:
        first = await client.messages.create(model=GPT, max_tokens=100, messages=ask, tools=[TOOL])
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and "location" in use.input
    sent = upstream.records[-1].json()
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": TOOL["input_schema"], "description": "Current weather"}}]
    follow = ask + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21C"}]},
    ]
    second = await client.messages.create(
        model=GPT, max_tokens=100, messages=follow, tools=[TOOL], tool_choice={"type": "none"}
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    sent = upstream.records[-1].json()
    assert sent["tool_choice"] == "none"
    assert sent["messages"][1]["tool_calls"][0]["id"] == use.id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "Sunny, 21C"}
