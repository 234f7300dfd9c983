"""Wire-format and scripted-behaviour tests for the fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import aiohttp
import openai
import orjson
import pytest

from bench.fake_upstream import (
    DISCONNECTS,
    OPTIONS,
    RECORDS,
    SCRIPT,
    FakeOptions,
    build_app,
    delay,
    hang,
    reset,
    stall_after,
    status,
    truncate_after,
)

MSGS = [{"role": "user", "content": "What is the weather like in Paris today?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}},
        "required": ["location"], "additionalProperties": False}}}]


@pytest.fixture
async def server(aiohttp_server):
    return await aiohttp_server(build_app(FakeOptions(chunks=5)))


@pytest.fixture
async def client(server):
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k",
                                  max_retries=0) as c:
        yield c


async def sse_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    return [e[6:] for e in raw.split(b"\n\n") if e]


async def test_chat_non_stream(client, server):
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "gpt-4o-mini" and r.system_fingerprint
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == "Hello! This is the demo model."
    assert choice.message.refusal is None
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == len(MSGS[0]["content"]) // 4 + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    rec = server.app[RECORDS][-1]
    assert rec.path == "/v1/chat/completions" and rec.key == "k"
    assert rec.json()["messages"] == MSGS and rec.headers["authorization"] == "Bearer k"


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_usage_only_when_asked(client, server, include_usage):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(model="demo", messages=MSGS, stream=True,
                                                  **kwargs)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! This is the demo model."
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


async def test_chat_stream_raw_bytes(aiohttp_client):
    http = await aiohttp_client(build_app(FakeOptions(chunks=2)))
    body = {"model": "demo", "messages": MSGS, "stream": True,
            "stream_options": {"include_usage": True}}
    async with http.post("/chat/completions", json=body,
                         headers={"Authorization": "Bearer k"}) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await sse_events(resp)
    assert events[-1] == b"[DONE]" and len(events) == 6  # role, 2 content, finish, usage
    assert b'"usage":null' in events[0] and b": " not in events[0]  # compact like OpenAI
    first = orjson.loads(events[0])
    assert list(first) == ["id", "object", "created", "model", "service_tier",
                           "system_fingerprint", "choices", "usage"]
    assert first["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": "",
                                                         "refusal": None},
                                   "logprobs": None, "finish_reason": None}
    assert orjson.loads(events[3])["choices"][0]["delta"] == {}
    assert orjson.loads(events[4])["choices"] == []


async def test_tool_call_stream_and_non_stream(client):
    r = await client.chat.completions.create(model="demo", messages=MSGS, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    tc = r.choices[0].message.tool_calls[0]
    assert tc.type == "function" and tc.function.name == "get_weather"
    assert orjson.loads(tc.function.arguments) == {"location": "Paris"}

    stream = await client.chat.completions.create(model="demo", messages=MSGS, tools=TOOLS,
                                                  stream=True)
    chunks = [c async for c in stream]
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert deltas[0][0].id and deltas[0][0].function.name == "get_weather"
    assert deltas[0][0].function.arguments == ""
    assert all(d[0].id is None and d[0].index == 0 for d in deltas[1:]) and len(deltas) > 2
    assert orjson.loads("".join(d[0].function.arguments for d in deltas)) == {"location": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_json_modes_reply_valid_json(client):
    r = await client.chat.completions.create(model="demo", messages=MSGS,
                                             response_format={"type": "json_object"})
    assert isinstance(orjson.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "temp": {"type": "number"}}}
    r = await client.chat.completions.create(
        model="demo", messages=MSGS,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}})
    assert set(orjson.loads(r.choices[0].message.content)) == {"city", "temp"}


async def test_legacy_completions(client):
    r = await client.completions.create(model="demo", prompt="Say hi")
    assert r.object == "text_completion" and r.choices[0].text == "Hello! This is the demo model."
    stream = await client.completions.create(model="demo", prompt="Say hi", stream=True)
    text = "".join([c.choices[0].text async for c in stream])
    assert text == "Hello! This is the demo model."


async def test_embeddings_default_base64_and_float(client, server):
    r = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert server.app[RECORDS][-1].json()["encoding_format"] == "base64"
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 1536
    assert r.usage.prompt_tokens == 2
    f = await client.embeddings.create(model="text-embedding-3-small", input="a",
                                       encoding_format="float", dimensions=8)
    assert len(f.data[0].embedding) == 8
    short = await client.embeddings.create(model="text-embedding-3-small", input="a",
                                           dimensions=8)
    assert short.data[0].embedding == f.data[0].embedding


async def test_models(client):
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert "demo" in ids and "whisper-1" in ids and page.data[0].object == "model"
    assert (await client.models.retrieve("tts-1")).owned_by == "system"
    with pytest.raises(openai.NotFoundError) as ei:
        await client.models.retrieve("nope")
    assert ei.value.code == "model_not_found"


async def test_images_speech_transcription_moderation(client, server):
    img = await client.images.generate(model="dall-e-3", prompt="a cat",
                                       response_format="b64_json")
    assert base64.b64decode(img.data[0].b64_json).startswith(b"\x89PNG")
    speech = await client.audio.speech.create(model="tts-1", voice="alloy", input="hi",
                                              response_format="wav")
    audio = speech.read()
    assert audio[:4] == b"RIFF" and len(audio) > 4000
    payload = bytes(range(256)) * 400
    tr = await client.audio.transcriptions.create(model="whisper-1",
                                                  file=("a.wav", payload, "audio/wav"))
    assert tr.text
    rec = server.app[RECORDS][-1]
    assert rec.fields["model"] == "whisper-1"
    assert rec.files["file"]["size"] == len(payload)
    assert rec.files["file"]["sha256"] == hashlib.sha256(payload).hexdigest()
    txt = await client.audio.transcriptions.create(model="whisper-1", response_format="text",
                                                   file=("a.wav", b"x", "audio/wav"))
    assert "demo transcription" in txt
    mod = await client.moderations.create(input=["a", "b"])
    assert len(mod.results) == 2 and mod.results[0].flagged is False


async def test_speech_is_chunked(aiohttp_client):
    http = await aiohttp_client(build_app(FakeOptions(chunks=4, chunk_delay_ms=20)))
    async with http.post("/v1/audio/speech", headers={"Authorization": "Bearer k"},
                         json={"model": "tts-1", "voice": "alloy", "input": "hi"}) as resp:
        assert resp.headers["Content-Type"] == "audio/mpeg"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        parts = [c async for c, _ in resp.content.iter_chunks()]
    assert len([p for p in parts if p]) >= 4 and b"".join(parts).startswith(b"ID3")


async def test_auth_required(aiohttp_client):
    http = await aiohttp_client(build_app())
    resp = await http.post("/v1/chat/completions", json={"model": "demo", "messages": MSGS})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"


async def test_script_status_429_with_retry_after(client, server):
    server.app[SCRIPT]["k"] = [status(429, retry_after=2), status(500)]
    raw = client.with_options(max_retries=0).chat.completions.with_raw_response
    with pytest.raises(openai.RateLimitError) as ei:
        await raw.create(model="demo", messages=MSGS)
    assert ei.value.response.headers["Retry-After"] == "2"
    assert ei.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as ei:
        await client.chat.completions.create(model="demo", messages=MSGS)
    assert ei.value.body["type"] == "server_error"
    assert (await client.chat.completions.create(model="demo", messages=MSGS)).choices


async def test_script_reset(aiohttp_client):
    http = await aiohttp_client(build_app())
    http.app[SCRIPT]["k"] = [reset()]
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.post("/v1/models", headers={"Authorization": "Bearer k"})
    assert (await http.get("/v1/models", headers={"Authorization": "Bearer k"})).status == 200


@pytest.mark.parametrize("clean", [False, True])
async def test_script_truncate(aiohttp_client, clean):
    http = await aiohttp_client(build_app(FakeOptions(chunks=6)))
    http.app[SCRIPT]["k"] = [truncate_after(2, clean=clean)]
    body = {"model": "demo", "messages": MSGS, "stream": True}
    resp = await http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
    assert resp.status == 200
    if not clean:  # connection dropped mid-body: the client sees an incomplete payload
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        return
    events = [e for e in (await resp.read()).split(b"\n\n") if e]
    assert len(events) == 3 and b"[DONE]" not in events[-1]  # role + 2 content chunks

async def test_script_stall_detects_disconnect(aiohttp_client):
    http = await aiohttp_client(build_app(FakeOptions(chunks=6)))
    http.app[SCRIPT]["k"] = [stall_after(2)]
    body = {"model": "demo", "messages": MSGS, "stream": True}
    resp = await http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
    got = b""
    while got.count(b"\n\n") < 3:
        got += await resp.content.readany()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(resp.content.readany(), 0.2)
    assert http.app[DISCONNECTS].count == 0
    resp.close()
    await http.app[DISCONNECTS].wait(1, timeout=1.0)
    assert http.app[DISCONNECTS].keys == ["k"]


async def test_script_hang_and_delay(aiohttp_client):
    http = await aiohttp_client(build_app())
    http.app[SCRIPT]["k"] = [hang(), delay(150)]
    auth = {"Authorization": "Bearer k"}
    with pytest.raises(asyncio.TimeoutError):
        await http.get("/v1/models", headers=auth, timeout=aiohttp.ClientTimeout(total=0.3))
    await http.app[DISCONNECTS].wait(1, timeout=1.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await http.get("/v1/models", headers=auth)).status == 200
    assert loop.time() - t0 >= 0.14


async def test_options_are_live_and_fail_rate(aiohttp_client):
    http = await aiohttp_client(build_app(FakeOptions(fail_rate=1.0, fail_status=503)))
    auth = {"Authorization": "Bearer k"}
    resp = await http.get("/v1/models", headers=auth)
    assert resp.status == 503 and (await resp.json())["error"]["type"] == "server_error"
    http.app[OPTIONS].fail_rate = 0.0
    assert (await http.get("/models", headers=auth)).status == 200

