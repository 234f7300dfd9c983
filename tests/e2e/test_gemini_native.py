"""The Gemini-native routes end to end: the official google-genai SDK -> the relay -> a gemini channel (the fake
Gemini API: passthrough), an openai channel (the fake OpenAI upstream) and an anthropic channel (the fake
Messages API), both translated."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import orjson
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from bench import fake_upstream as openai_fake
from tests.conftest import ACCOUNTS, CLIENT_KEY, MODELS, Relay, Upstream, wait_ledger
from tests.fakes import anthropic_upstream as claude_fake
from tests.fakes import gemini_upstream as gem

GEM, GPT, CLAUDE, EMBED_GEM, EMBED_GPT = (
    "gemini-2.5-flash", "gpt-4o-mini", "claude-relay-test", "text-embedding-004", "text-embedding-3-small")
WEATHER = types.FunctionDeclaration(
    name="get_weather", description="Current weather",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"location": types.Schema(type=types.Type.STRING)},
                            required=["location"]),
)
ASK = "What is the weather like in Paris today?"


def sdk(api_key: str, url: str) -> genai.Client:
    """The SDK pointed at the relay, on an httpx client (its own aiohttp session warns on creation)."""
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(
        base_url=url, httpx_async_client=httpx.AsyncClient(timeout=10)))


async def close(client: genai.Client) -> None:
    await client.aio.aclose()
    http = client._api_client._http_options.httpx_async_client
    if http is not None:
        await http.aclose()


class Env:
    def __init__(self, relay: Relay, gemini: TestServer, openai_up: Upstream, claude: TestServer) -> None:
        self.relay, self.gemini, self.openai, self.claude = relay, gemini, openai_up, claude
        self.client = sdk(CLIENT_KEY, relay.url)

    @property
    def gemini_records(self) -> list[gem.GeminiReceived]:
        return self.gemini.app[gem.RECORDS]


@pytest.fixture
async def env(aiohttp_server: Callable[..., Awaitable[TestServer]], relay_factory: Any,
              upstream: Upstream) -> AsyncIterator[Env]:
    gemini = await aiohttp_server(gem.build_app(("gk-1",)))
    claude = await aiohttp_server(claude_fake.build_app())
    relay = await relay_factory(
        channels=[
            {"name": "gem", "type": "gemini", "base_url": str(gemini.make_url("")).rstrip("/"), "keys": ["gk-1"],
             "models": [GEM, EMBED_GEM]},
            {"name": "fake", "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS), "models": MODELS},
            {"name": "claude", "type": "anthropic", "base_url": str(claude.make_url("")).rstrip("/"),
             "keys": ["ak-1"], "models": [CLAUDE]},
        ],
        prices={GEM: {"input": 0.3, "output": 2.5}, EMBED_GEM: {"input": 0.02}, CLAUDE: {"input": 3, "output": 15}},
    )
    e = Env(relay, gemini, upstream, claude)
    try:
        yield e
    finally:
        await close(e.client)


async def _raw(env: Env, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
               ) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, env.relay.url + path, data=None if body is None else orjson.dumps(body),
                             headers={"Content-Type": "application/json", **(headers or {})}) as r:
            return r.status, await r.read(), dict(r.headers)


BODY = {"contents": [{"role": "user", "parts": [{"text": ASK}]}]}


# -- gemini channel: passthrough ----------------------------------------------------------------------------


async def test_generate_passthrough(env: Env) -> None:
    resp = await env.client.aio.models.generate_content(model=GEM, contents=ASK)
    assert resp.text == gem.TEXT
    assert resp.usage_metadata is not None and resp.usage_metadata.thoughts_token_count == 7
    [rec] = env.gemini_records
    assert rec.path == f"/v1beta/models/{GEM}:generateContent" and rec.query == ""
    assert rec.headers["x-goog-api-key"] == "gk-1" and "Authorization" not in rec.headers
    assert CLIENT_KEY not in str(rec.headers)
    assert rec.body["contents"] == [{"role": "user", "parts": [{"text": ASK}]}]
    rows = await wait_ledger(env.relay.database, 1)
    meta = resp.usage_metadata
    assert rows[0]["endpoint"] == "gemini/generateContent" and rows[0]["channel"] == "gem"
    assert rows[0]["usage_source"] == "upstream" and rows[0]["prompt_tokens"] == meta.prompt_token_count
    assert rows[0]["completion_tokens"] == (meta.candidates_token_count or 0) + 7  # thoughts count as output
    assert rows[0]["cost_usd"] > 0


async def test_generate_body_bytes_untouched(env: Env) -> None:
    raw = b'{"contents": [{"role":"user","parts":[{"text":"Hi"}]}],  "generationConfig": {"temperature": 0.5}}'
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{env.relay.url}/v1beta/models/{GEM}:generateContent", data=raw,
                          headers={"x-goog-api-key": CLIENT_KEY, "Content-Type": "application/json"}) as r:
            assert r.status == 200
            assert (await r.json())["candidates"][0]["content"]["parts"][0]["text"] == gem.TEXT
    assert env.gemini_records[0].body == orjson.loads(raw)
    async with aiohttp.ClientSession() as s:  # the same request straight to the fake: the same bytes
        async with s.post(f"{env.relay.url}/v1beta/models/{GEM}:generateContent", data=raw,
                          headers={"x-goog-api-key": CLIENT_KEY, "Content-Type": "application/json"}) as r:
            relayed = await r.read()
        async with s.post(str(env.gemini.make_url(f"/v1beta/models/{GEM}:generateContent")), data=raw,
                          headers={"x-goog-api-key": "gk-1", "Content-Type": "application/json"}) as r:
            direct = await r.read()
    assert relayed == direct


async def test_stream_passthrough_byte_exact(env: Env) -> None:
    texts = []
    async for chunk in await env.client.aio.models.generate_content_stream(model=GEM, contents=ASK):
        texts.append(chunk.text or "")
    assert "".join(texts) == gem.TEXT
    [rec] = env.gemini_records
    assert rec.path == f"/v1beta/models/{GEM}:streamGenerateContent" and rec.query == "alt=sse"
    status, body, headers = await _raw(env, "POST", f"/v1beta/models/{GEM}:streamGenerateContent?alt=sse",
                                       BODY, {"x-goog-api-key": CLIENT_KEY})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body == b"".join(env.gemini.app[gem.STREAMED])  # the fake's bytes, unchanged
    rows = await wait_ledger(env.relay.database, 2)
    assert rows[-1]["usage_source"] == "upstream" and rows[-1]["end_reason"] == "ok" and rows[-1]["stream"] == 1


async def test_stream_json_array_without_alt(env: Env) -> None:
    status, body, headers = await _raw(env, "POST", f"/v1beta/models/{GEM}:streamGenerateContent", BODY,
                                       {"x-goog-api-key": CLIENT_KEY})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body.startswith(b"[{") and body.endswith(b"}\n]") and b"\n,{" in body
    items = orjson.loads(body)
    assert "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in items) == gem.TEXT
    assert env.gemini_records[-1].query == "alt=sse"


async def test_cut_stream_ends_with_google_error(env: Env) -> None:
    env.gemini.app[gem.SCRIPT]["gk-1"] = [("truncate",)]
    with pytest.raises(genai_errors.APIError) as e:
        async for _ in await env.client.aio.models.generate_content_stream(model=GEM, contents=ASK):
            pass
    assert e.value.code == 500 and "ended before it finished" in (e.value.message or "")
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["end_reason"] == "upstream_error"


async def test_function_calling_passthrough(env: Env) -> None:
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])],
                                         automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    resp = await env.client.aio.models.generate_content(model=GEM, contents=ASK, config=config)
    [call] = resp.function_calls or []
    assert call.name == "get_weather" and call.args == {"location": "Paris"}
    sent = env.gemini_records[0].body
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"


async def test_count_tokens_passthrough(env: Env) -> None:
    resp = await env.client.aio.models.count_tokens(model=GEM, contents=ASK)
    assert resp.total_tokens == gem._prompt_tokens({"contents": [{"role": "user", "parts": [{"text": ASK}]}]})
    assert env.gemini_records[0].path.endswith(":countTokens")
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["endpoint"] == "gemini/countTokens" and rows[0]["cost_usd"] == 0


async def test_embed_passthrough(env: Env) -> None:
    resp = await env.client.aio.models.embed_content(model=EMBED_GEM, contents=["first text", "second text"])
    assert resp.embeddings is not None and len(resp.embeddings) == 2
    assert len(resp.embeddings[0].values or []) == 8 and resp.embeddings[0].values != resp.embeddings[1].values
    assert env.gemini_records[0].path == f"/v1beta/models/{EMBED_GEM}:batchEmbedContents"
    status, body, _ = await _raw(env, "POST", f"/v1beta/models/{EMBED_GEM}:embedContent",
                                 {"content": {"parts": [{"text": "first text"}]}}, {"x-goog-api-key": CLIENT_KEY})
    assert status == 200 and orjson.loads(body)["embedding"]["values"] == resp.embeddings[0].values


# -- auth ------------------------------------------------------------------------------------------------------


async def test_key_by_query_is_never_kept(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, body, _ = await _raw(env, "POST", f"/v1beta/models/{GEM}:generateContent?key={CLIENT_KEY}", BODY)
    assert status == 200, body
    status, body, _ = await _raw(env, "POST", f"/v1beta/models/{GEM}:streamGenerateContent?alt=sse&key={CLIENT_KEY}",
                                 BODY)
    assert status == 200 and b"finishReason" in body
    status, _, _ = await _raw(env, "POST", f"/v1beta/models/{GPT}:generateContent?key={CLIENT_KEY}", BODY)
    assert status == 200
    for rec in env.gemini_records:
        assert "key=" not in rec.query and CLIENT_KEY not in rec.url
    assert all(CLIENT_KEY not in str(r.headers) + r.path for r in env.openai.records)
    assert CLIENT_KEY not in caplog.text
    await wait_ledger(env.relay.database, 3)
    data = b"".join(p.read_bytes() for p in Path(env.relay.database).parent.glob("*.db*"))
    assert CLIENT_KEY.encode() not in data and b"key=" not in data


async def test_key_by_bearer(env: Env) -> None:
    status, body, _ = await _raw(env, "POST", f"/v1beta/models/{GEM}:generateContent", BODY,
                                 {"Authorization": f"Bearer {CLIENT_KEY}"})
    assert status == 200 and orjson.loads(body)["candidates"][0]["content"]["parts"][0]["text"] == gem.TEXT
    assert "Authorization" not in env.gemini_records[0].headers


async def test_bad_key_and_no_key(env: Env) -> None:
    bad = sdk("sk-wrong", env.relay.url)
    try:
        with pytest.raises(genai_errors.ClientError) as e:
            await bad.aio.models.generate_content(model=GEM, contents=ASK)
    finally:
        await close(bad)
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED"
    status, body, _ = await _raw(env, "POST", f"/v1beta/models/{GEM}:generateContent", BODY)
    assert status == 401 and orjson.loads(body)["error"]["status"] == "UNAUTHENTICATED"
    assert not env.gemini_records


# -- errors in Google's shape ------------------------------------------------------------------------------------


async def test_unknown_model(env: Env) -> None:
    with pytest.raises(genai_errors.ClientError) as e:
        await env.client.aio.models.generate_content(model="gemini-nope", contents=ASK)
    assert e.value.code == 404 and e.value.status == "NOT_FOUND" and "models/gemini-nope" in (e.value.message or "")


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (orjson.dumps({"contents": []}), "contents is not specified"),
    (orjson.dumps({"contents": [{"role": "user", "parts": "hi"}]}), "contents[0]"),
    (orjson.dumps({**BODY, "generationConfig": {"maxOutputTokens": "many"}}), "max_output_tokens"),
])
async def test_bad_body(env: Env, body: bytes, needle: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{env.relay.url}/v1beta/models/{GEM}:generateContent", data=body,
                          headers={"x-goog-api-key": CLIENT_KEY, "Content-Type": "application/json"}) as r:
            assert r.status == 400
            err = (await r.json())["error"]
    assert err["code"] == 400 and err["status"] == "INVALID_ARGUMENT" and needle in err["message"]
    assert not env.gemini_records


async def test_upstream_error_reaches_client_as_is(env: Env) -> None:
    env.gemini.app[gem.SCRIPT]["gk-1"] = [("status", 400, "INVALID_ARGUMENT", "Bad schema in tools[0].")]
    with pytest.raises(genai_errors.ClientError) as e:
        await env.client.aio.models.generate_content(model=GEM, contents=ASK)
    assert e.value.code == 400 and e.value.message == "Bad schema in tools[0]."


async def test_unknown_method_and_path(env: Env) -> None:
    status, body, _ = await _raw(env, "POST", f"/v1beta/models/{GEM}:frobnicate", BODY, {"x-goog-api-key": CLIENT_KEY})
    assert status == 404 and orjson.loads(body)["error"]["status"] == "NOT_FOUND"
    status, body, _ = await _raw(env, "GET", "/v1beta/cachedContents", None, {"x-goog-api-key": CLIENT_KEY})
    assert status == 404 and orjson.loads(body)["error"]["status"] == "NOT_FOUND"


# -- models -----------------------------------------------------------------------------------------------------------


async def test_models_list_and_get(env: Env) -> None:
    names = {}
    async for m in await env.client.aio.models.list():
        names[m.name] = m
    assert {f"models/{GEM}", f"models/{GPT}", f"models/{CLAUDE}", f"models/{EMBED_GEM}"} <= set(names)
    assert "generateContent" in (names[f"models/{GEM}"].supported_actions or [])
    assert names[f"models/{EMBED_GEM}"].supported_actions == ["embedContent", "batchEmbedContents"]
    one = await env.client.aio.models.get(model=GPT)
    assert one.name == f"models/{GPT}" and one.display_name == GPT
    status, body, _ = await _raw(env, "GET", "/v1beta/models?pageSize=2", None, {"x-goog-api-key": CLIENT_KEY})
    page = orjson.loads(body)
    assert status == 200 and len(page["models"]) == 2 and page["nextPageToken"] == "2"
    status, body, _ = await _raw(env, "GET", "/v1/models", None, {"Authorization": f"Bearer {CLIENT_KEY}"})
    assert orjson.loads(body)["object"] == "list"  # /v1/models stays OpenAI's


async def test_v1_prefix_action(env: Env) -> None:
    status, body, _ = await _raw(env, "POST", f"/v1/models/{GEM}:generateContent", BODY, {"x-goog-api-key": CLIENT_KEY})
    assert status == 200 and b"candidates" in body


# -- openai and anthropic channels: translated --------------------------------------------------------------------


@pytest.mark.parametrize("model", [GPT, CLAUDE])
async def test_generate_translated(env: Env, model: str) -> None:
    config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=300, temperature=0.2)
    resp = await env.client.aio.models.generate_content(model=model, contents=ASK, config=config)
    assert resp.text and resp.candidates and resp.candidates[0].finish_reason == types.FinishReason.STOP
    meta = resp.usage_metadata
    assert meta is not None and (meta.prompt_token_count or 0) > 0 and (meta.candidates_token_count or 0) > 0
    if model == CLAUDE:
        assert resp.text == claude_fake.TEXT
        sent = env.claude.app[claude_fake.RECORDS][-1].body
        assert sent["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}]) and sent["max_tokens"] == 300
    else:
        sent = env.openai.records[-1].json()
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 300
        assert sent["temperature"] == 0.2
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["usage_source"] == "upstream" and rows[0]["prompt_tokens"] == meta.prompt_token_count


@pytest.mark.parametrize("model", [GPT, CLAUDE])
async def test_stream_translated(env: Env, model: str) -> None:
    texts, last = [], None
    async for chunk in await env.client.aio.models.generate_content_stream(model=model, contents=ASK):
        texts.append(chunk.text or "")
        last = chunk
    assert "".join(texts)
    if model == CLAUDE:
        assert "".join(texts) == claude_fake.TEXT
    assert last is not None and last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None and (last.usage_metadata.total_token_count or 0) > 0
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["end_reason"] == "ok" and rows[0]["usage_source"] == "upstream"


@pytest.mark.parametrize("model", [GPT, CLAUDE])
@pytest.mark.parametrize("stream", [False, True])
async def test_function_calling_translated(env: Env, model: str, stream: bool) -> None:
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])],
                                         automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    if stream:
        calls = []
        async for chunk in await env.client.aio.models.generate_content_stream(model=model, contents=ASK, config=config):
            calls += chunk.function_calls or []
    else:
        calls = (await env.client.aio.models.generate_content(model=model, contents=ASK, config=config)).function_calls or []
    [call] = calls
    assert call.name == "get_weather" and isinstance(call.args, dict) and "location" in call.args
    history = [
        types.Content(role="user", parts=[types.Part(text=ASK)]),
        types.Content(role="model", parts=[types.Part(function_call=call)]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            id=call.id, name="get_weather", response={"temp_c": 21}))]),
    ]
    resp = await env.client.aio.models.generate_content(model=model, contents=history, config=config)
    assert resp.text and not resp.function_calls
    if model == CLAUDE:
        assert resp.text == 'The tool said: {"temp_c":21}'
        sent = env.claude.app[claude_fake.RECORDS][-1].body
        assert sent["messages"][1]["content"][0]["type"] == "tool_use"
        assert sent["messages"][2]["content"][0]["type"] == "tool_result"
    else:
        msgs = env.openai.records[-1].json()["messages"]
        assert msgs[1]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert msgs[2] == {"role": "tool", "tool_call_id": msgs[1]["tool_calls"][0]["id"], "content": '{"temp_c":21}'}
        assert env.openai.records[-1].json()["tools"][0]["function"]["parameters"] == {
            "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}


async def test_count_tokens_translated_is_local(env: Env) -> None:
    before = len(env.openai.records)
    resp = await env.client.aio.models.count_tokens(model=GPT, contents=ASK)
    assert resp.total_tokens and resp.total_tokens > 5
    assert len(env.openai.records) == before  # counted by the relay, nothing relayed
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["endpoint"] == "gemini/countTokens" and rows[0]["cost_usd"] == 0 and rows[0]["status"] == 200


async def test_embed_translated(env: Env) -> None:
    resp = await env.client.aio.models.embed_content(
        model=EMBED_GPT, contents=["first text", "second text"],
        config=types.EmbedContentConfig(output_dimensionality=16))
    assert resp.embeddings is not None and len(resp.embeddings) == 2
    assert len(resp.embeddings[0].values or []) == 16
    sent = env.openai.records[-1]
    assert sent.path.endswith("/embeddings") and sent.json()["input"] == ["first text", "second text"]
    assert sent.json()["dimensions"] == 16
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["endpoint"] == "gemini/batchEmbedContents" and rows[0]["usage_source"] == "upstream"


async def test_translated_upstream_error_in_google_shape(env: Env) -> None:
    for key in ACCOUNTS:
        env.openai.script[key] = [openai_fake.status(400, body={"error": {
            "message": "Bad things.", "type": "invalid_request_error", "param": None, "code": None}})]
    with pytest.raises(genai_errors.ClientError) as e:
        await env.client.aio.models.generate_content(model=GPT, contents=ASK)
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT" and e.value.message == "Bad things."


async def test_sdk_on_v1beta(env: Env) -> None:
    """The SDK's default API version is v1; Gemini CLI and older SDKs call /v1beta: both are served alike."""
    http = httpx.AsyncClient(timeout=10)
    client = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(
        base_url=env.relay.url, api_version="v1beta", httpx_async_client=http))
    urls: list[str] = []

    async def hook(request: httpx.Request) -> None:
        urls.append(request.url.path)

    http.event_hooks["request"] = [hook]
    try:
        resp = await client.aio.models.generate_content(model=GPT, contents=ASK)
        assert resp.text
        texts = [c.text or "" async for c in await client.aio.models.generate_content_stream(model=GEM, contents=ASK)]
        assert "".join(texts) == gem.TEXT
        names = [m.name async for m in await client.aio.models.list()]
        assert f"models/{GEM}" in names
    finally:
        await close(client)
    assert urls[0] == f"/v1beta/models/{GPT}:generateContent" and urls[2] == "/v1beta/models"


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.mark.parametrize("model", [GPT, CLAUDE])
async def test_images_translated(env: Env, model: str) -> None:
    contents = [types.Content(role="user", parts=[
        types.Part(text="What is in these?"), types.Part.from_bytes(data=PNG, mime_type="image/png"),
        types.Part.from_uri(file_uri="https://example.com/cat.jpg", mime_type="image/jpeg")])]
    resp = await env.client.aio.models.generate_content(model=model, contents=contents)
    assert resp.text
    if model == CLAUDE:
        blocks = env.claude.app[claude_fake.RECORDS][-1].body["messages"][0]["content"]
        assert [b["type"] for b in blocks] == ["text", "image", "image"]
        assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png",
                                       "data": base64.b64encode(PNG).decode()}
        assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}
    else:
        parts = env.openai.records[-1].json()["messages"][0]["content"]
        assert parts[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}
        assert parts[2] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}


async def test_translated_stream_cut_raises_in_the_sdk(env: Env) -> None:
    for key in ACCOUNTS:
        env.openai.script[key] = [openai_fake.truncate_after(2)]
    with pytest.raises(genai_errors.APIError) as e:
        async for _ in await env.client.aio.models.generate_content_stream(model=GPT, contents=ASK):
            pass
    assert e.value.code == 500 and e.value.status == "INTERNAL"
    rows = await wait_ledger(env.relay.database, 1)
    assert rows[0]["end_reason"] == "upstream_error"


async def test_translated_stream_as_json_array(env: Env) -> None:
    status, body, headers = await _raw(env, "POST", f"/v1beta/models/{CLAUDE}:streamGenerateContent", BODY,
                                       {"x-goog-api-key": CLIENT_KEY})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    items = orjson.loads(body)
    text = "".join(p.get("text", "") for i in items for c in i["candidates"] for p in c["content"]["parts"])
    assert text == claude_fake.TEXT and items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert items[-1]["usageMetadata"]["promptTokenCount"] > 0


async def test_local_count_tokens_counts_against_rpm_only(env: Env) -> None:
    from tests.e2e.test_limits import add_key

    secret = await add_key(env.relay.database, rpm=2, tpm=1)  # tpm=1: any token charge would refuse it
    body = {"contents": [{"role": "user", "parts": [{"text": ASK * 20}]}]}
    seen = []
    for _ in range(60):  # until the relay has picked up the new key (within a second)
        status, _, _ = await _raw(env, "POST", f"/v1beta/models/{GPT}:countTokens", body, {"x-goog-api-key": secret})
        if status != 401:
            seen.append(status)
            break
        await asyncio.sleep(0.05)
    for _ in range(2):
        status, raw, headers = await _raw(env, "POST", f"/v1beta/models/{GPT}:countTokens", body,
                                          {"x-goog-api-key": secret})
        seen.append(status)
    assert seen == [200, 200, 429]
    err = orjson.loads(raw)["error"]
    assert err["status"] == "RESOURCE_EXHAUSTED" and "Retry-After" in headers
    assert not any(r.path.endswith("/chat/completions") for r in env.openai.records)
