"""A `gemini` channel end to end: the official openai SDK -> the relay -> a fake Gemini API (real wire format)."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import CLIENT_KEY, wait_ledger
from tests.fakes import gemini_upstream as gem

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather", "strict": True,
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["location", "unit"], "additionalProperties": False}}}
CITY = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"},
                                     "coastal": {"type": "boolean"}},
    "required": ["city", "population", "coastal"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


class Env:
    def __init__(self, fake: TestServer, relay: Any) -> None:
        self.fake, self.relay = fake, relay
        self.client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)

    @property
    def records(self) -> list[gem.GeminiReceived]:
        return self.fake.app[gem.RECORDS]


@pytest.fixture
async def env(aiohttp_server: Callable[..., Awaitable[TestServer]], relay_factory: Any) -> AsyncIterator[Env]:
    fake = await aiohttp_server(gem.build_app(("gk-1", "gk-2")))
    relay = await relay_factory(
        channels=[{"name": "gem", "type": "gemini", "base_url": str(fake.make_url("")).rstrip("/"),
                   "keys": ["gk-1"], "models": ["gemini-2.5-flash", "text-embedding-004"]}],
        prices={"gemini-2.5-flash": {"input": 0.3, "output": 2.5}, "text-embedding-004": {"input": 0.02}},
    )
    e = Env(fake, relay)
    async with e.client:
        yield e


def _no_key_in_urls(env: Env) -> None:
    assert env.records
    for r in env.records:
        assert "gk-1" not in r.url and "key=" not in r.query, r.url
        assert r.headers.get("x-goog-api-key") == "gk-1"
        assert "Authorization" not in r.headers


async def test_text(env: Env) -> None:
    resp = await env.client.chat.completions.create(model="gemini-2.5-flash", messages=ASK, max_tokens=200)
    assert resp.choices[0].message.content == gem.TEXT
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "gemini-2.5-flash" and resp.object == "chat.completion"
    assert resp.usage is not None and resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 7  # candidates + 7 thought tokens
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    [rec] = env.records
    assert rec.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert rec.body["contents"] == [{"role": "user", "parts": [{"text": ASK[0]["content"]}]}]
    assert rec.body["generationConfig"] == {"maxOutputTokens": 200}
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["usage_source"] == "upstream" and rows[0]["channel"] == "gem"
    assert rows[0]["prompt_tokens"] == resp.usage.prompt_tokens
    assert rows[0]["completion_tokens"] == resp.usage.completion_tokens
    _no_key_in_urls(env)


async def test_length_finish(env: Env) -> None:
    resp = await env.client.chat.completions.create(model="gemini-2.5-flash", messages=ASK, max_completion_tokens=2)
    assert resp.choices[0].finish_reason == "length" and resp.choices[0].message.content == "Hello! I"


async def test_system_prompt_becomes_system_instruction(env: Env) -> None:
    await env.client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "system", "content": "You are terse."}, *ASK, {"role": "user", "content": "Thanks."}],
    )
    body = env.records[0].body
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": ASK[0]["content"]}, {"text": "Thanks."}]}]


async def test_tools_round_trip(env: Env) -> None:
    first = await env.client.chat.completions.create(model="gemini-2.5-flash", messages=ASK, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert orjson.loads(call.function.arguments) == {"location": "Paris", "unit": "c"}
    sent = env.records[0].body["tools"][0]["functionDeclarations"][0]
    assert "additionalProperties" not in orjson.dumps(sent).decode() and "strict" not in sent
    again = await env.client.chat.completions.create(model="gemini-2.5-flash", messages=ASK, tools=[WEATHER])
    assert again.choices[0].message.tool_calls[0].id == call.id  # type: ignore[index]

    second = await env.client.chat.completions.create(model="gemini-2.5-flash", tools=[WEATHER], messages=[
        *ASK, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "clear"}'},
    ])
    assert second.choices[0].message.content == 'The tool said: {"temp_c":21,"sky":"clear"}'
    contents = env.records[-1].body["contents"]
    assert contents[1] == {"role": "model", "parts": [  # the thought signature goes back with its call
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "unit": "c"}},
         "thoughtSignature": gem.SIGNATURE}]}
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21, "sky": "clear"}}}]}


async def test_streamed_text_with_usage(env: Env) -> None:
    stream = await env.client.chat.completions.create(
        model="gemini-2.5-flash", messages=ASK, stream=True, stream_options={"include_usage": True})
    text, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == gem.TEXT and finish == "stop"
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 7
    assert env.records[0].path.endswith(":streamGenerateContent") and env.records[0].query == "alt=sse"
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["usage_source"] == "upstream" and rows[0]["completion_tokens"] == usage.completion_tokens
    _no_key_in_urls(env)


async def test_streamed_tools(env: Env) -> None:
    stream = await env.client.chat.completions.create(
        model="gemini-2.5-flash", messages=ASK, tools=[WEATHER], tool_choice="required", stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for tc in c.delta.tool_calls or ():
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                slot["name"] += (tc.function.name or "") if tc.function else ""
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert orjson.loads(calls[0]["arguments"]) == {"location": "Paris", "unit": "c"}
    assert env.records[0].body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


async def test_json_schema(env: Env) -> None:
    resp = await env.client.chat.completions.create(model="gemini-2.5-flash", messages=ASK, response_format=CITY)  # type: ignore[arg-type]
    assert orjson.loads(resp.choices[0].message.content or "") == {"city": "Paris", "population": 1, "coastal": True}
    config = env.records[0].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {"type": "OBJECT", "properties": {
        "city": {"type": "STRING"}, "population": {"type": "INTEGER"}, "coastal": {"type": "BOOLEAN"}},
        "required": ["city", "population", "coastal"]}


async def test_embeddings(env: Env) -> None:
    resp = await env.client.embeddings.create(model="text-embedding-004", input=["hello", "world"])  # SDK asks base64
    floats = await env.client.embeddings.create(model="text-embedding-004", input="hello", encoding_format="float")
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 8
    assert resp.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0 and resp.model == "text-embedding-004"
    rec = env.records[0]
    assert rec.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert rec.body == {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}},
                                     {"model": "models/text-embedding-004", "content": {"parts": [{"text": "world"}]}}]}
    _no_key_in_urls(env)


async def test_embeddings_base64_bytes(env: Env) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.post(env.relay.v1 + "/embeddings", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                          json={"model": "text-embedding-004", "input": "hi", "encoding_format": "base64"}) as r:
            doc = await r.json()
    raw = base64.b64decode(doc["data"][0]["embedding"])
    assert len(raw) == 32 and all(-1.0 <= v <= 1.0 for v in struct.unpack("<8f", raw))


async def test_upstream_error_is_openai_shaped(env: Env) -> None:
    env.fake.app[gem.SCRIPT]["gk-1"] = [("status", 400, "INVALID_ARGUMENT", "Request contains an invalid argument.")]
    with pytest.raises(openai.BadRequestError) as e:
        await env.client.chat.completions.create(model="gemini-2.5-flash", messages=ASK)
    assert e.value.status_code == 400
    assert e.value.body == {"message": "Request contains an invalid argument.", "type": "invalid_request_error",
                            "param": None, "code": "INVALID_ARGUMENT"}


async def test_cut_stream_ends_with_an_error(env: Env) -> None:
    env.fake.app[gem.SCRIPT]["gk-1"] = [("truncate",)]
    stream = await env.client.chat.completions.create(model="gemini-2.5-flash", messages=ASK, stream=True)
    text = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
    assert "".join(text) == gem.TEXT
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["end_reason"] == "upstream_error" and rows[0]["usage_source"] == "estimate"
    assert rows[0]["completion_tokens"] > 0
