"""End-to-end tests of the client API over real HTTP: the official openai SDK (or raw aiohttp for byte-level
checks) talks to the relay, which talks to the fake OpenAI upstream.

An `openai`-type channel forwards the upstream's bytes untouched, so most tests compare what the client got
from the relay with what the fake answers when called directly. The fake's ids and `created` stamps change
on every call; `_norm` blanks exactly those two fields and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from yarl import URL

from bench import fake_upstream as fake
from tests.conftest import ACCOUNTS, CLIENT_KEY, MODELS, read_ledger, wait_ledger

MSGS = [{"role": "user", "content": "What is the weather like in Paris today?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["location", "unit"], "additionalProperties": False}}}]
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"},
                                     "coastal": {"type": "boolean"}},
    "required": ["city", "population", "coastal"], "additionalProperties": False}}}
# What the fake answers with its default 8 chunks: its demo sentence twice.
DEMO_TEXT = "Hello! This is the demo model. Hello! This is the demo model."
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
DIRECT = {"Authorization": "Bearer direct-test"}  # the test's own key when calling the fake directly
ERROR_FIELDS = {"message", "type", "param", "code"}

_ID = re.compile(rb'"id":"[^"]*"')
_CREATED = re.compile(rb'"created":\d+')


def _norm(data: bytes) -> bytes:
    """The fake's per-call fields (ids, created) blanked; every other byte kept."""
    return _CREATED.sub(b'"created":0', _ID.sub(b'"id":"-"', data))


def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-200:]
    return [e for e in raw.split(b"\n\n") if e]


def _payloads(raw: bytes) -> list[Any]:
    """The data of every SSE event but [DONE], parsed."""
    out = []
    for event in _events(raw):
        assert event.startswith(b"data: "), event
        if event != b"data: [DONE]":
            out.append(orjson.loads(event[6:]))
    return out


def _relayed(upstream: Any) -> list[fake.Received]:
    """What the relay sent to the fake (the test's own direct calls left out)."""
    return [r for r in upstream.records if r.key != "direct-test"]


def _assert_error(status: int, headers: Any, body: bytes, expected: int, *, param: Any = ...,
                  code: Any = ..., no_retry: bool = True) -> dict[str, Any]:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/json")
    doc = orjson.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == ERROR_FIELDS, doc
    err = doc["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    if no_retry:
        assert headers.get("x-should-retry") == "false"
    return err


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(openai_client: openai.AsyncOpenAI) -> Any:
    async with openai_client:
        yield openai_client


async def _post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None,
                ) -> tuple[int, Any, bytes]:
    hdrs = {"Content-Type": "application/json", **(headers if headers is not None else AUTH)}
    async with http.post(url, data=body, headers=hdrs) as resp:
        return resp.status, resp.headers, await resp.read()


# ---- 1. chat, non-stream ----------------------------------------------------------------------------------


async def test_chat_non_stream_matches_upstream_bytes(client, relay, upstream, http):
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSGS, temperature=0.2)
    relay_bytes = raw.http_response.content
    result = raw.parse()
    sent = _relayed(upstream)[-1].body
    status, _, direct = await _post(http, upstream.url + "/chat/completions", sent, DIRECT)
    assert status == 200
    assert relay_bytes != b"" and _norm(relay_bytes) == _norm(direct)
    assert result.to_dict() == orjson.loads(relay_bytes)
    assert result.choices[0].message.content == DEMO_TEXT
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens > 0 and result.usage.prompt_tokens > 0


async def test_chat_request_reaches_upstream_untouched(relay, upstream, http):
    # spacing, key order and number spelling a re-serialisation would change
    body = (b'{ "messages": [{"role": "user", "content": "Caf\\u00e9 \xe2\x98\x95 in Paris?"}],\n'
            b'  "model": "gpt-4o-mini", "temperature": 0.30, "top_p": 1E0, "seed": 7,\n'
            b'  "user": "end-user-1", "x_custom": {"a": 1}, "metadata": {"k": "v"} }')
    status, _, _ = await _post(http, relay.v1 + "/chat/completions", body, {
        **AUTH, "Cookie": "session=client-cookie-secret", "x-api-key": CLIENT_KEY,
        "OpenAI-Organization": "org-client"})
    assert status == 200
    [rec] = _relayed(upstream)
    assert rec.path == "/v1/chat/completions"
    assert rec.body == body  # byte for byte, the unknown field included
    assert rec.json()["x_custom"] == {"a": 1}
    assert rec.key in ACCOUNTS and rec.headers["Authorization"] == f"Bearer {rec.key}"
    assert "Cookie" not in rec.headers and "x-api-key" not in rec.headers
    for name, value in rec.headers.items():
        assert CLIENT_KEY not in value, name
        assert "client-cookie-secret" not in value, name


async def test_sdk_extra_body_field_reaches_upstream(client, upstream):
    await client.chat.completions.create(model="demo", messages=MSGS, max_tokens=50,
                                         extra_body={"x_custom": {"a": 1}},
                                         extra_headers={"Cookie": "c=1"})
    [rec] = _relayed(upstream)
    got = rec.json()
    assert got == {"model": "demo", "messages": MSGS, "max_tokens": 50, "x_custom": {"a": 1}}
    assert rec.headers["Authorization"] in {f"Bearer {a}" for a in ACCOUNTS}
    assert "Cookie" not in rec.headers


# ---- 2. chat, stream --------------------------------------------------------------------------------------


async def test_chat_stream_deltas_equal_non_stream_content(client):
    full = await client.chat.completions.create(model="demo", messages=MSGS)
    stream = await client.chat.completions.create(model="demo", messages=MSGS, stream=True)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content and text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks)  # no usage-only chunk: the client did not ask for one
    assert all(c.usage is None for c in chunks)


async def test_chat_stream_with_usage_is_upstream_bytes(relay, upstream, http):
    body = (b'{"model": "demo", "stream": true, "stream_options": {"include_usage": true},\n'
            b' "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}]}')
    async with http.post(relay.v1 + "/chat/completions", data=body,
                         headers={**AUTH, "Accept-Encoding": "gzip, deflate"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in resp.headers
        relay_raw = await resp.read()
    [rec] = _relayed(upstream)
    assert rec.body == body
    status, _, direct_raw = await _post(http, upstream.url + "/chat/completions", body, DIRECT)
    assert status == 200
    ours, theirs = _events(relay_raw), _events(direct_raw)
    assert len(ours) == len(theirs) > 3
    for a, b in zip(ours, theirs):
        assert _norm(a) == _norm(b)
    assert ours[-1] == b"data: [DONE]"
    last = orjson.loads(ours[-2][6:])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0


async def test_chat_stream_without_usage_hides_usage_chunk(relay, upstream, http):
    body = orjson.dumps({"model": "demo", "messages": MSGS, "stream": True})
    async with http.post(relay.v1 + "/chat/completions", data=body, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in resp.headers
        relay_raw = await resp.read()
    assert _events(relay_raw)[-1] == b"data: [DONE]"
    ours = _payloads(relay_raw)
    assert all(p["choices"] != [] for p in ours)
    assert all(p.get("usage") is None for p in ours)
    # apart from a null "usage" member, the client sees what the fake streams to a client that did not ask
    status, _, direct_raw = await _post(http, upstream.url + "/chat/completions", body, DIRECT)
    assert status == 200
    theirs = _payloads(direct_raw)

    def strip(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k not in ("id", "created", "usage")}

    assert [strip(p) for p in ours] == [strip(p) for p in theirs]


async def test_chat_stream_sdk_sees_usage_when_asked(client):
    stream = await client.chat.completions.create(model="demo", messages=MSGS, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


# ---- 3. tools and response_format -------------------------------------------------------------------------


async def test_tool_call_non_stream(client, upstream):
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, tools=TOOLS,
                                             tool_choice="auto")
    assert r.choices[0].finish_reason == "tool_calls"
    [call] = r.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert orjson.loads(call.function.arguments) == {"location": "Paris", "unit": "c"}
    assert _relayed(upstream)[-1].json()["tools"] == TOOLS


async def test_tool_call_stream_reassembles(client):
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, tools=TOOLS,
                                                  stream=True)
    name, args, ids, finish = "", "", set(), None
    fragments = 0
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or ():
                assert tc.index == 0
                if tc.id:
                    ids.add(tc.id)
                if tc.function and tc.function.name:
                    name += tc.function.name
                if tc.function and tc.function.arguments:
                    args += tc.function.arguments
                    fragments += 1
    assert fragments > 1  # it really came in pieces
    assert name == "get_weather" and len(ids) == 1 and finish == "tool_calls"
    assert orjson.loads(args) == {"location": "Paris", "unit": "c"}


async def test_json_schema_response_format(client, upstream):
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS,
                                             response_format=SCHEMA_FORMAT)
    assert _relayed(upstream)[-1].json()["response_format"] == SCHEMA_FORMAT
    doc = orjson.loads(r.choices[0].message.content)
    assert doc == {"city": "Paris", "population": 1, "coastal": False}


# ---- 4. the other endpoints -------------------------------------------------------------------------------


async def test_embeddings_sdk_default_base64(client, upstream, http):
    r = await client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert _relayed(upstream)[-1].json()["encoding_format"] == "base64"
    status, _, direct = await _post(http, upstream.url + "/embeddings", orjson.dumps(
        {"model": "text-embedding-3-small", "input": ["hello", "world"], "encoding_format": "float"}), DIRECT)
    assert status == 200
    expected = orjson.loads(direct)
    assert [d.embedding for d in r.data] == [d["embedding"] for d in expected["data"]]
    assert len(r.data[0].embedding) == 1536 and r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == expected["usage"]["prompt_tokens"] > 0


async def test_embeddings_float_bytes_untouched(client, upstream, http):
    raw = await client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello", encoding_format="float", dimensions=64)
    sent = _relayed(upstream)[-1].body
    status, _, direct = await _post(http, upstream.url + "/embeddings", sent, DIRECT)
    assert status == 200 and raw.http_response.content == direct  # nothing per-call in it: byte-exact
    r = raw.parse()
    assert r.data[0].embedding == orjson.loads(direct)["data"][0]["embedding"]
    assert len(r.data[0].embedding) == 64


async def test_models_list_and_retrieve(client, relay):
    ids = [m.id async for m in client.models.list()]
    assert sorted(ids) == sorted(MODELS)
    m = await client.models.retrieve("gpt-4o-mini")
    assert m.id == "gpt-4o-mini" and m.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("no-such-model")
    assert info.value.status_code == 404


async def test_unknown_model_id_is_openai_404(relay, http):
    async with http.get(relay.v1 + "/models/no-such-model", headers=AUTH) as resp:
        _assert_error(resp.status, resp.headers, await resp.read(), 404)


async def test_images_generate(client, upstream, http):
    raw = await client.images.with_raw_response.generate(model="dall-e-3", prompt="a red fox", n=1)
    r = raw.parse()
    assert r.data[0].url.endswith("/_fake/images/demo.png")
    assert r.data[0].revised_prompt == "a red fox"
    sent = _relayed(upstream)[-1].body
    status, _, direct = await _post(http, upstream.url + "/images/generations", sent, DIRECT)
    assert status == 200 and _norm(raw.http_response.content) == _norm(direct)


async def test_audio_speech_bytes(client, upstream, http):
    resp = await client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there")
    assert resp.response.headers["content-type"] == "audio/mpeg"
    audio = resp.content
    sent = _relayed(upstream)[-1].body
    status, _, direct = await _post(http, upstream.url + "/audio/speech", sent, DIRECT)
    assert status == 200 and audio == direct == fake.MP3
    wav = await client.audio.speech.create(model="tts-1", voice="alloy", input="x", response_format="wav")
    assert wav.content == fake.WAV


async def test_audio_speech_is_streamed_through(relay, upstream, http):
    upstream.options.chunks = 3
    upstream.options.chunk_delay_ms = 400  # the fake sends the audio in 3 parts, 400 ms apart
    body = orjson.dumps({"model": "tts-1", "voice": "alloy", "input": "Hello"})
    t0 = time.monotonic()
    async with http.post(relay.v1 + "/audio/speech", data=body, headers=AUTH) as resp:
        assert resp.status == 200
        first = await resp.content.readany()
        t_first = time.monotonic() - t0
        rest = await resp.read()
        t_all = time.monotonic() - t0
    assert first and first + rest == fake.MP3
    assert t_all >= 0.75
    assert t_first < 0.4, f"first audio bytes after {t_first:.2f}s: the relay buffered the body"


@pytest.mark.parametrize("kind", ["transcriptions", pytest.param("translations", marks=pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"))])  # the SDK marks audio.translations deprecated
async def test_audio_upload_3mb(client, upstream, kind):
    data = random.Random(42).randbytes(3 * 1024 * 1024 + 123)
    api = getattr(client.audio, kind)
    r = await api.create(model="whisper-1", file=("speech.wav", data, "audio/wav"))
    assert r.text == "Hello! This is the demo transcription."
    [rec] = _relayed(upstream)
    assert rec.path == f"/v1/audio/{kind}"
    assert rec.fields["model"] == "whisper-1"
    got = rec.files["file"]
    assert got["sha256"] == hashlib.sha256(data).hexdigest() and got["size"] == len(data)
    assert got["filename"] == "speech.wav"
    assert rec.headers["Authorization"] in {f"Bearer {a}" for a in ACCOUNTS}


async def test_audio_transcription_text_format(client):
    text = await client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"ID3" + bytes(500)),
                                                    response_format="text")
    assert text.strip() == "Hello! This is the demo transcription."


async def test_moderations(client, upstream):
    r = await client.moderations.create(model="omni-moderation-latest", input=["one", "two"])
    assert len(r.results) == 2 and not r.results[0].flagged and r.model == "omni-moderation-latest"
    assert _relayed(upstream)[-1].json() == {"model": "omni-moderation-latest", "input": ["one", "two"]}


# ---- 5. bare paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/v1"])
async def test_bare_and_v1_paths(relay, upstream, suffix):
    async with openai.AsyncOpenAI(base_url=relay.url + suffix, api_key=CLIENT_KEY, max_retries=0,
                                  timeout=10) as c:
        r = await c.chat.completions.create(model="demo", messages=MSGS)
        assert r.choices[0].message.content == DEMO_TEXT
        e = await c.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
        assert len(e.data[0].embedding) == 1536
        assert sorted([m.id async for m in c.models.list()]) == sorted(MODELS)
        assert (await c.models.retrieve("demo")).id == "demo"
    assert [r.path for r in _relayed(upstream)] == ["/v1/chat/completions", "/v1/embeddings"]


# ---- 6. bad input -----------------------------------------------------------------------------------------

_DEEP = b'{"model":"demo","messages":[{"role":"user","content":' + b"[" * 2000 + b"]" * 2000 + b"}]}"
_BAD_BODIES = {
    "malformed_json": (b'{"model": "demo", "messages": [', None),
    "invalid_utf8": (b'{"model":"demo","messages":[{"role":"user","content":"caf\xc3\x28 \xff\xfe"}]}', None),
    "nested_2000": (_DEEP, None),
    "not_an_object": (b'[{"model":"demo"}]', None),
    "empty_body": (b"", None),
    "model_not_string": (b'{"model":5,"messages":[{"role":"user","content":"hi"}]}', "model"),
    "stream_not_bool": (b'{"model":"demo","stream":"yes","messages":[{"role":"user","content":"hi"}]}', "stream"),
    "messages_string": (b'{"model":"demo","messages":"hi"}', "messages"),
    "max_tokens_string": (b'{"model":"demo","max_tokens":"10","messages":[{"role":"user","content":"hi"}]}',
                          "max_tokens"),
    "missing_model": (b'{"messages":[{"role":"user","content":"hi"}]}', "model"),
}


@pytest.mark.parametrize("case", list(_BAD_BODIES))
async def test_bad_body_is_400(relay, upstream, http, case):
    body, param = _BAD_BODIES[case]
    status, headers, raw = await _post(http, relay.v1 + "/chat/completions", body)
    err = _assert_error(status, headers, raw, 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    assert _relayed(upstream) == []  # refused before any upstream was asked


async def test_bad_input_through_sdk_is_bad_request(client, upstream):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="demo", messages="hi")  # type: ignore[arg-type]
    assert info.value.status_code == 400 and info.value.param == "messages"
    assert _relayed(upstream) == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong-key"}, {"x-api-key": "sk-wrong"},
                                     {"Authorization": "Basic Zm9vOmJhcg=="}])
async def test_missing_or_wrong_key_is_401(relay, upstream, http, headers):
    body = orjson.dumps({"model": "demo", "messages": MSGS})
    status, hdrs, raw = await _post(http, relay.v1 + "/chat/completions", body, headers)
    err = _assert_error(status, hdrs, raw, 401)
    assert CLIENT_KEY not in raw.decode()
    assert err["code"] in ("invalid_api_key", "missing_api_key")
    async with http.get(relay.v1 + "/models", headers=headers) as resp:
        _assert_error(resp.status, resp.headers, await resp.read(), 401)
    assert _relayed(upstream) == []


async def test_x_api_key_header_is_accepted(relay, http):
    status, _, raw = await _post(http, relay.v1 + "/chat/completions",
                                 orjson.dumps({"model": "demo", "messages": MSGS}), {"x-api-key": CLIENT_KEY})
    assert status == 200 and orjson.loads(raw)["object"] == "chat.completion"


async def test_wrong_key_through_sdk(relay, upstream):
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key="sk-not-a-key", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            await c.chat.completions.create(model="demo", messages=MSGS)
    assert info.value.status_code == 401
    assert _relayed(upstream) == []


async def test_unknown_model_is_404(client, relay, upstream, http):
    status, headers, raw = await _post(http, relay.v1 + "/chat/completions",
                                       orjson.dumps({"model": "no-such-model", "messages": MSGS}))
    _assert_error(status, headers, raw, 404, param="model", code="model_not_found")
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="no-such-model", input="x")
    assert _relayed(upstream) == []


async def _raw_exchange(base: str, head: bytes, body_part: bytes, timeout: float = 2.0,
                        ) -> tuple[int, dict[str, str], bytes]:
    """Send a request head and part of its body on a raw connection; read the response within `timeout`."""
    u = URL(base)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        writer.write(head + body_part)
        await writer.drain()
        async with asyncio.timeout(timeout):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1]), headers, body


def _head(host: str, extra: str) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def _check_413(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413, body
    assert headers["content-type"].startswith("application/json")
    assert headers.get("x-should-retry") == "false"
    doc = orjson.loads(body)
    assert set(doc["error"]) == ERROR_FIELDS


async def test_body_over_limit_refused_before_it_is_sent(relay_factory, upstream):
    relay = await relay_factory(server={"max_body_bytes": 2048})
    host = URL(relay.url).raw_authority
    status, headers, body = await _raw_exchange(relay.url, _head(host, "Content-Length: 100000000\r\n"),
                                                b'{"model":"demo","messages":[')
    _check_413(status, headers, body)
    assert _relayed(upstream) == []


async def test_chunked_body_over_limit_refused_without_waiting_for_its_end(relay_factory, upstream):
    relay = await relay_factory(server={"max_body_bytes": 2048})
    host = URL(relay.url).raw_authority
    piece = b'{"model":"demo","messages":[{"role":"user","content":"' + b"a" * 3000
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"  # the terminating 0-chunk never comes
    status, headers, body = await _raw_exchange(relay.url, _head(host, "Transfer-Encoding: chunked\r\n"), chunk)
    _check_413(status, headers, body)
    assert _relayed(upstream) == []


async def test_chunked_body_over_limit_via_client(relay_factory, upstream, http):
    relay = await relay_factory(server={"max_body_bytes": 2048})

    async def gen() -> Any:
        yield b'{"model":"demo","messages":[{"role":"user","content":"'
        for _ in range(4):
            yield b"b" * 1000
        yield b'"}]}'

    async with http.post(relay.v1 + "/chat/completions", data=gen(), headers=AUTH) as resp:
        _assert_error(resp.status, resp.headers, await resp.read(), 413)
    # just under the limit still goes through
    small = orjson.dumps({"model": "demo", "messages": [{"role": "user", "content": "c" * 1500}]})
    status, _, _ = await _post(http, relay.v1 + "/chat/completions", small)
    assert status == 200 and len(_relayed(upstream)) == 1


async def test_upstream_client_error_passed_through_without_failover(client, relay, upstream, http):
    upstream_error = {"error": {"message": "Invalid value for 'temperature': must be <= 2.",
                                "type": "invalid_request_error", "param": "temperature",
                                "code": "invalid_value"}}
    for account in ACCOUNTS:
        upstream.script[account] = [fake.status(400, body=upstream_error)]
    status, _, raw = await _post(http, relay.v1 + "/chat/completions",
                                 orjson.dumps({"model": "demo", "messages": MSGS, "temperature": 9}))
    assert status == 400
    assert orjson.loads(raw) == upstream_error
    assert len(_relayed(upstream)) == 1  # not retried on another account
    # through the SDK: the same error, raised as BadRequestError
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="demo", messages=MSGS, temperature=9)
    assert info.value.param == "temperature" and info.value.code == "invalid_value"
    assert len(_relayed(upstream)) == 2


# ---- 7. CORS ----------------------------------------------------------------------------------------------


async def test_cors_preflight_without_auth(relay, http):
    async with http.options(relay.v1 + "/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}) as resp:
        assert resp.status == 204
        assert resp.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example")
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert "POST" in resp.headers.get("Access-Control-Allow-Methods", "")
        assert "authorization" in resp.headers.get("Access-Control-Allow-Headers", "").lower()


async def test_cors_on_relayed_post(relay, http):
    body = orjson.dumps({"model": "demo", "messages": MSGS})
    status, headers, _ = await _post(http, relay.v1 + "/chat/completions", body,
                                     {**AUTH, "Origin": "https://app.example"})
    assert status == 200
    assert headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example")
    assert "Access-Control-Allow-Credentials" not in headers
    status, headers, _ = await _post(http, relay.v1 + "/chat/completions", b"{", {**AUTH, "Origin": "https://x.example"})
    assert status == 400 and headers.get("Access-Control-Allow-Origin") in ("*", "https://x.example")


async def test_no_cors_on_admin_and_metrics(relay, http):
    origin = {"Origin": "https://app.example"}
    for path in ("/metrics", "/healthz", "/admin/keys"):
        async with http.get(relay.url + path, headers=origin) as resp:
            await resp.read()
            assert "Access-Control-Allow-Origin" not in resp.headers, path
    async with http.options(relay.url + "/admin/keys", headers={
            **origin, "Access-Control-Request-Method": "GET"}) as resp:
        assert resp.status != 204 and "Access-Control-Allow-Origin" not in resp.headers
    async with http.get(relay.url + "/metrics", headers=origin) as resp:
        assert resp.status == 200


# ---- 8. privacy of the ledger -----------------------------------------------------------------------------


async def test_ledger_keeps_no_prompt_or_key(client, relay):
    marker = f"zq-private-marker-{uuid.uuid4().hex}"
    msgs = [{"role": "user", "content": f"My secret is {marker}. Keep it."}]
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    assert r.choices[0].message.content
    stream = await client.chat.completions.create(model="demo", messages=msgs, stream=True,
                                                  extra_body={"user": marker})
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    rows = await wait_ledger(relay.database, 2)
    await asyncio.sleep(0.2)  # a stray extra row would show up by now
    rows = read_ledger(relay.database)
    assert len(rows) == 2, rows
    assert [(r["model"], r["stream"]) for r in rows] == [("gpt-4o-mini", 0), ("demo", 1)]
    for row in rows:
        assert row["status"] == 200 and row["end_reason"] == "ok"
        assert row["usage_source"] == "upstream"
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["endpoint"] == "chat/completions"
    raw = b""
    for suffix in ("", "-wal"):
        p = Path(relay.database + suffix)
        if p.exists():
            raw += p.read_bytes()
    assert raw
    assert marker.encode() not in raw
    assert CLIENT_KEY.encode() not in raw
    assert b"zq-private-marker" not in raw
