"""End to end: the official openai SDK talks to the relay, whose `anthropic` channel talks to a fake Messages
API speaking the real wire format (tests/fakes/anthropic_upstream.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import CLIENT_KEY, Relay, wait_ledger
from tests.fakes import anthropic_upstream as fake

MODEL = "claude-sonnet-4-5"
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["location", "unit"]}}}]


class Claude:
    def __init__(self, server: TestServer, app: Any) -> None:
        self.server, self.app = server, app

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")  # as the anthropic SDK takes it: no /v1

    @property
    def records(self) -> list[fake.Received]:
        return self.app[fake.RECORDS]

    @property
    def script(self) -> list[Any]:
        return self.app[fake.SCRIPT]


@pytest.fixture
async def claude(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Claude:
    app = fake.build_app(fake.FakeOptions(input_tokens=25, cache_read_input_tokens=10))
    return Claude(await aiohttp_server(app), app)


@pytest.fixture
async def relay(relay_factory: Any, claude: Claude) -> Relay:
    return await relay_factory(  # type: ignore[no-any-return]
        channels=[{"name": "claude", "type": "anthropic", "base_url": claude.url, "keys": ["ak-1"], "models": [MODEL]}],
        prices={MODEL: {"input": 3, "output": 15}},
    )


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


async def test_text_system_and_usage(client: openai.AsyncOpenAI, claude: Claude, relay: Relay) -> None:
    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}],
    )
    assert resp.choices[0].message.content == fake.TEXT
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == MODEL
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 35 and resp.usage.completion_tokens > 0
    assert resp.usage.prompt_tokens_details is not None and resp.usage.prompt_tokens_details.cached_tokens == 10
    [rec] = claude.records
    assert rec.headers["x-api-key"] == "ak-1" and rec.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in rec.headers
    assert rec.body["system"] == "Be brief."
    assert rec.body["model"] == MODEL and rec.body["max_tokens"] == 4096
    assert rec.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Weather?"}]}]
    [row] = await wait_ledger(relay.database, 1)
    assert row["status"] == 200 and row["end_reason"] == "ok" and row["usage_source"] == "upstream"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (35, resp.usage.completion_tokens)
    assert row["channel"] == "claude" and row["cost_usd"] > 0


async def test_stream_text_with_usage(client: openai.AsyncOpenAI, claude: Claude, relay: Relay) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == fake.TEXT and finish == "stop"
    assert usage is not None and usage.prompt_tokens == 35 and usage.completion_tokens > 0
    assert claude.records[0].body["stream"] is True
    [row] = await wait_ledger(relay.database, 1)
    assert row["usage_source"] == "upstream" and row["end_reason"] == "ok" and row["stream"] == 1
    assert row["completion_tokens"] == usage.completion_tokens


async def test_stream_without_usage_still_billed_from_upstream(client: openai.AsyncOpenAI, relay: Relay) -> None:
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    [row] = await wait_ledger(relay.database, 1)
    assert row["usage_source"] == "upstream" and row["prompt_tokens"] == 35


async def test_tools_round_trip(client: openai.AsyncOpenAI, claude: Claude) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, parallel_tool_calls=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"location": "Paris", "unit": "c"}
    sent = claude.records[0].body
    assert sent["tools"] == [{"name": "get_weather", "description": "Current weather",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "The tool said: 18C and sunny"
    assert second.choices[0].finish_reason == "stop"
    turns = claude.records[1].body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"location": "Paris", "unit": "c"}}]
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}]


async def test_streamed_tool_call(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, tool_choice="required", stream=True,
    )
    ids, names, args, finish = [], [], "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or ():
            assert tc.index == 0
            if tc.id:
                ids.append(tc.id)
                names.append(tc.function.name if tc.function else None)
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert len(ids) == 1 and ids[0].startswith("toolu_") and names == ["get_weather"]
    assert orjson.loads(args) == {"location": "Paris", "unit": "c"}
    assert finish == "tool_calls"


async def test_json_schema_through_a_forced_tool(client: openai.AsyncOpenAI, claude: Claude) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"]}}}
    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Biggest city?"}], response_format=fmt,
    )
    assert orjson.loads(resp.choices[0].message.content or "") == {"city": "Paris", "population": 42}
    assert resp.choices[0].finish_reason == "stop" and not resp.choices[0].message.tool_calls
    assert claude.records[0].body["tool_choice"] == {"type": "tool", "name": "city"}


async def test_upstream_400_comes_back_openai_shaped(client: openai.AsyncOpenAI, claude: Claude, relay: Relay) -> None:
    claude.script.append((400, fake.error_body("invalid_request_error", "messages.0.content: bad block")))
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 400
    assert e.value.body == {"message": "messages.0.content: bad block", "type": "invalid_request_error",
                            "param": None, "code": "invalid_request_error"}
    assert e.value.response.headers["content-type"].startswith("application/json")
    assert len(claude.records) == 1  # a client error is not retried


async def test_overloaded_is_retried(relay_factory: Any, claude: Claude) -> None:
    relay = await relay_factory(
        channels=[{"name": "claude", "type": "anthropic", "base_url": claude.url, "keys": ["ak-1", "ak-2"],
                   "models": [MODEL]}],
        prices={MODEL: {"input": 3, "output": 15}},
    )
    claude.script.append((529, fake.error_body("overloaded_error", "Overloaded")))
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as client:
        resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert resp.choices[0].message.content == fake.TEXT
    assert [r.status for r in claude.records] == [529, 200]
    assert {r.headers["x-api-key"] for r in claude.records} == {"ak-1", "ak-2"}


async def test_stream_error_event_raises_in_the_sdk(client: openai.AsyncOpenAI, claude: Claude, relay: Relay) -> None:
    claude.script.append(("stream_error", {"type": "overloaded_error", "message": "Overloaded"}))
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        async for _ in stream:
            pass
    [row] = await wait_ledger(relay.database, 1)
    assert row["end_reason"] == "upstream_error"
