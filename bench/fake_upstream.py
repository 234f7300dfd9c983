"""A fast, faithful fake of the OpenAI HTTP API (demo upstream, benchmark upstream, test double).

Endpoints (with and without the ``/v1`` prefix): ``chat/completions``, ``completions``,
``embeddings``, ``images/generations`` (+ ``edits``/``variations``), ``audio/speech``,
``audio/transcriptions``, ``audio/translations``, ``moderations``, ``rerank`` (Jina's format),
``models``, ``models/{id}``,
and the Responses API (``responses`` and its stateful follow-ups: see bench/fake_responses.py).
Every request needs ``Authorization: Bearer <non-empty>``; errors use OpenAI's error object.

Test hooks, stored on the app under the typed keys exported here:

* ``RECORDS`` - list of :class:`Received`, one per request (when ``FakeOptions.record``).
* ``SCRIPT`` - ``{api_key: [Action, ...]}``; each request made with that key consumes the
  first action (FIFO); no (more) actions means a normal answer. Actions:
  ``status(code, retry_after=None, body=None)`` error reply (429 adds ``Retry-After``);
  ``reset()`` abort the TCP connection without a response; ``hang()`` never send headers;
  ``stall_after(n)`` send n content chunks (n parts of a non-streamed body) then go silent;
  ``truncate_after(n, clean=False)`` send n chunks then abort the connection (``clean=True``:
  end the HTTP body properly but without the finish chunk and ``[DONE]``);
  ``delay(ms)`` wait before the headers, then answer normally.
  The strings ``"reset"`` and ``"hang"`` are accepted as shorthands.
* ``FakeOptions.key_answers`` - ``{api_key: Action}``: a switchable per-key answer, given to every
  request with that key (once its ``SCRIPT`` queue is empty) until the entry is removed, e.g.
  ``key_answers["acct-1"] = status(401)`` takes an account down, ``del`` brings it back.
* ``DISCONNECTS`` - :class:`DisconnectLog` of client disconnects seen by a handler.
  Streams notice a disconnect on their next write (or immediately when the server runs with
  ``handler_cancellation=True``, which ``aiohttp_server``/``TestServer`` and the CLI use);
  ``hang``/``stall`` poll the transport every 50 ms and notice within that.
* ``OPTIONS`` - the live :class:`FakeOptions` (mutable; read on every request).
* A chat model whose name holds ``reasoner`` answers with ``reasoning_content`` (``REASONING``) before its
  text, as DeepSeek-R1 does.
* ``bench.fake_responses.RESPONSES`` - the stored Responses API responses, per account key.

With ``chunk_delay_ms == 0`` a whole SSE stream is sent in one write (same bytes, fewer
syscalls); set a delay to observe chunks arriving one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import math
import os
import random
import signal
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from multidict import CIMultiDict

DEFAULT_MODELS = ("demo", "gpt-4o-mini", "text-embedding-3-small", "dall-e-3", "tts-1",
                  "whisper-1", "omni-moderation-latest")
FINGERPRINT = "fp_fake0demo"
_SENTENCE = "Hello! This is the demo model."
# What models named *reasoner* think before they answer, in reasoning_content.
REASONING = "The user greets me. I should answer briefly."
_TRANSCRIPT = "Hello! This is the demo transcription."
_IDS = itertools.count(1)
_RUN = os.urandom(4).hex()


@dataclass
class FakeOptions:
    latency_ms: float = 0.0
    chunks: int = 8
    chunk_delay_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500
    models: tuple[str, ...] = DEFAULT_MODELS
    seed: int = 0
    record: bool = True
    key_answers: dict[str, Action | str] = field(default_factory=dict)  # see the module docstring


@dataclass(frozen=True, slots=True)
class Action:
    """One scripted behaviour; build it with the helper functions below."""
    kind: str  # status | reset | hang | stall | truncate | delay
    code: int = 0
    retry_after: float | None = None
    body: Any = None
    n: int = 0
    ms: float = 0.0
    clean: bool = False


def status(code: int, retry_after: float | None = None, body: Any = None) -> Action:
    return Action("status", code=code, retry_after=retry_after, body=body)


def reset() -> Action:
    return Action("reset")


def hang() -> Action:
    return Action("hang")


def stall_after(n: int) -> Action:
    return Action("stall", n=n)


def truncate_after(n: int, clean: bool = False) -> Action:
    return Action("truncate", n=n, clean=clean)


def delay(ms: float) -> Action:
    return Action("delay", ms=ms)


@dataclass(slots=True)
class Received:
    """A request as the fake saw it (multipart bodies are summarised, not stored)."""
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    key: str | None
    at: float
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last file part of each name
    parts: list[dict[str, Any]] = field(default_factory=list)  # every multipart part, in order

    def json(self) -> Any:
        return orjson.loads(self.body)


class DisconnectLog:
    """Counts client disconnects observed by handlers (loop.time() stamps and api keys)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.keys: list[str | None] = []
        self.event = asyncio.Event()

    @property
    def count(self) -> int:
        return len(self.stamps)

    def record(self, key: str | None) -> None:
        self.stamps.append(asyncio.get_running_loop().time())
        self.keys.append(key)
        self.event.set()

    async def wait(self, count: int = 1, timeout: float = 2.0) -> None:
        """Wait until at least ``count`` disconnects were seen (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while len(self.stamps) < count:
                self.event.clear()
                await self.event.wait()


OPTIONS = web.AppKey("fake_options", FakeOptions)
RECORDS = web.AppKey("fake_records", list[Received])
SCRIPT = web.AppKey("fake_script", dict[str, list[Action | str]])
DISCONNECTS = web.AppKey("fake_disconnects", DisconnectLog)


class ApiError(Exception):
    """An OpenAI-style error reply; type and code default from the status."""

    def __init__(self, status: int, message: str, type_: str | None = None,
                 param: str | None = None, code: Any = ...) -> None:
        super().__init__(message)
        dtype, dcode = _ERR_DEFAULTS.get(status, ("server_error" if status >= 500
                                                 else "invalid_request_error", None))
        self.status = status
        self.body = orjson.dumps({"error": {"message": message, "type": type_ or dtype,
                                            "param": param,
                                            "code": dcode if code is ... else code}})


_ERR_DEFAULTS = {401: ("invalid_request_error", "invalid_api_key"),
                 403: ("invalid_request_error", "unsupported_country_region_territory"),
                 404: ("invalid_request_error", "not_found"),
                 429: ("requests", "rate_limit_exceeded")}
_ERR_MESSAGES = {400: "Invalid request.", 401: "Incorrect API key provided.",
                 404: "Not found.", 429: "Rate limit reached for requests. Please try again later.",
                 500: "The server had an error while processing your request. Sorry about that!",
                 503: "The engine is currently overloaded, please try again later."}


def _missing(name: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                    code="missing_required_parameter")


@dataclass(slots=True)
class Call:
    """What an endpoint builder gets: the parsed request."""
    key: str | None
    body: bytes
    fields: dict[str, str]
    files: dict[str, dict[str, Any]]
    request: web.Request
    _json: Any = None
    parts: list[dict[str, Any]] = field(default_factory=list)  # multipart parts in order (see Received)

    def json(self) -> dict[str, Any]:
        """The JSON body (or, for multipart requests, the plain form fields)."""
        if self._json is None:
            try:
                self._json = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                raise ApiError(400, "We could not parse the JSON body of your request.") from None
            if not isinstance(self._json, dict):
                raise ApiError(400, "The request body must be a JSON object.")
        return self._json

    def need(self, name: str) -> Any:
        value = self.json().get(name)
        if value is None or value == "":
            raise _missing(name)
        return value


@dataclass(slots=True)
class Reply:
    """A JSON/binary body, or streamed ``pieces`` (``head`` of them come before content)."""
    body: bytes = b""
    content_type: str = "application/json"
    pieces: list[bytes] | None = None
    head: int = 0
    sse: bool = False


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _sample(schema: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """A minimal value conforming to a JSON schema (for json_schema replies and tool args)."""
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _sample(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for k in ("anyOf", "oneOf", "allOf"):
        if schema.get(k):
            return _sample(schema[k][0], root, depth + 1)
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or "properties" in schema:
        return {k: _sample(v, root, depth + 1) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        item = _sample(schema.get("items"), root, depth + 1)
        return [item] * max(1, schema.get("minItems", 1))
    return {"string": "Paris", "integer": 1, "number": 1.5, "boolean": False}.get(t)


def _split(text: str, n: int) -> list[str]:
    """Split ``text`` into exactly ``n`` non-empty pieces (fewer only if it is shorter)."""
    n = max(1, min(n, len(text)))
    cuts = [len(text) * i // n for i in range(n + 1)]
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def _png() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    raw = b"".join(b"\x00" + b"\x33\x99\xff" * 4 for _ in range(4))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PNG = _png()
PNG_B64 = base64.b64encode(PNG).decode()
_WAV_DATA = 8192 - 44
WAV = (b"RIFF" + struct.pack("<I", 36 + _WAV_DATA) + b"WAVEfmt "
       + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16) + b"data"
       + struct.pack("<I", _WAV_DATA) + bytes(_WAV_DATA))
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + (b"\xff\xf3\x44\xc4" + bytes(140)) * 56
_AUDIO = {"mp3": ("audio/mpeg", MP3), "wav": ("audio/wav", WAV), "opus": ("audio/opus", MP3),
          "aac": ("audio/aac", MP3), "flac": ("audio/flac", MP3), "pcm": ("audio/pcm", WAV[44:])}
_MOD_CATS = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
             "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions",
             "sexual", "sexual/minors", "violence", "violence/graphic")
_MOD_RESULT = {"flagged": False, "categories": dict.fromkeys(_MOD_CATS, False),
               "category_scores": dict.fromkeys(_MOD_CATS, 1e-06),
               "category_applied_input_types": {c: ["text"] for c in _MOD_CATS}}
_SSE_DONE = b"data: [DONE]\n\n"
_ROLE_DELTA = b'{"role":"assistant","content":"","refusal":null}'


class FakeUpstream:
    """Holds the state and the request handlers of one fake app."""

    def __init__(self, opts: FakeOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.records: list[Received] = []
        self.script: dict[str, list[Action | str]] = {}
        self.disconnects = DisconnectLog()
        self._deltas: dict[tuple[int, int], list[bytes]] = {}
        self._emb: dict[int, tuple[list[float], bytes]] = {}

    # ---- plumbing -------------------------------------------------------------------------

    def route(self, build: Callable[[Call], Reply]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            key = (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None
            try:
                return await self._handle(request, key, build)
            except asyncio.CancelledError:
                self.disconnects.record(key)
                raise
        return handler

    async def _handle(self, request: web.Request, key: str | None,
                      build: Callable[[Call], Reply]) -> web.StreamResponse:
        fields: dict[str, str] = {}
        files: dict[str, dict[str, Any]] = {}
        parts: list[dict[str, Any]] = []
        multipart = request.content_type.startswith("multipart/")
        if multipart:
            await self._read_multipart(request, fields, files, parts)
            body = orjson.dumps({"fields": fields, "files": files})
        else:
            body = await request.read()
        if self.opts.record:
            self.records.append(Received(request.method, request.path, request.query_string,
                                         CIMultiDict(request.headers), body, key,
                                         asyncio.get_running_loop().time(), fields, files, parts))
        if key is None:
            return _error(ApiError(401, "You didn't provide an API key. You need to provide your "
                                   "API key in an Authorization header using Bearer auth."))
        action = self._next_action(key)
        if action is not None:
            if action.kind == "status":
                return _status_reply(action)
            if action.kind == "reset":
                _abort(request)
                return web.Response()
            if action.kind == "hang":
                await self._until_gone(request, key)
                return web.Response()
            if action.kind == "delay":
                await asyncio.sleep(action.ms / 1000)
                action = None
        opts = self.opts
        if opts.latency_ms > 0:
            await asyncio.sleep(opts.latency_ms / 1000)
        if opts.fail_rate > 0 and self.rng.random() < opts.fail_rate:
            return _error(ApiError(opts.fail_status, _ERR_MESSAGES.get(opts.fail_status, "Error.")))
        try:
            reply = build(Call(key, body, fields, files, request, fields if multipart else None, parts))
        except ApiError as exc:
            return _error(exc)
        if reply.pieces is None and action is None:
            return web.Response(body=reply.body, headers={"Content-Type": reply.content_type,
                                                          "x-request-id": _req_id()})
        return await self._stream(request, key, reply, action)

    def _next_action(self, key: str) -> Action | None:
        queue = self.script.get(key)
        if not queue:
            action = self.opts.key_answers.get(key)
            if action is None:
                return None
            return Action(action) if isinstance(action, str) else action
        action = queue.pop(0)
        return Action(action) if isinstance(action, str) else action

    async def _read_multipart(self, request: web.Request, fields: dict[str, str],
                              files: dict[str, dict[str, Any]], parts: list[dict[str, Any]]) -> None:
        """Fields as text; file parts hashed as they stream in (never held whole)."""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or not part.name:
                continue
            if part.filename is None:
                fields[part.name] = await part.text()
                parts.append({"name": part.name, "value": fields[part.name]})
                continue
            digest, size = hashlib.sha256(), 0
            while chunk := await part.read_chunk(65536):
                digest.update(chunk)
                size += len(chunk)
            files[part.name] = {"filename": part.filename, "size": size,
                                "content_type": part.headers.get("Content-Type"),
                                "sha256": digest.hexdigest()}
            parts.append({"name": part.name, **files[part.name]})

    async def _until_gone(self, request: web.Request, key: str | None) -> None:
        """Sleep until the client closes the connection, then record the disconnect."""
        while (t := request.transport) is not None and not t.is_closing():
            await asyncio.sleep(0.05)
        self.disconnects.record(key)

    async def _stream(self, request: web.Request, key: str | None, reply: Reply,
                      action: Action | None) -> web.StreamResponse:
        pieces = reply.pieces
        resp = web.StreamResponse(headers={"Content-Type": reply.content_type,
                                           "x-request-id": _req_id()})
        if pieces is None:  # a plain body sent partially (stall/truncate)
            half = len(reply.body) // 2
            pieces = [reply.body[:half], reply.body[half:]]
            resp.content_length = len(reply.body)
        cut = len(pieces) if action is None else min(len(pieces), reply.head + action.n)
        pause = self.opts.chunk_delay_ms / 1000
        try:
            await resp.prepare(request)
            if reply.sse and not pause and action is None:
                await resp.write(b"".join(pieces))
            else:
                for i in range(cut):
                    if i and pause:
                        await asyncio.sleep(pause)
                    await resp.write(pieces[i])
            if action is None:
                await resp.write_eof()
            elif action.kind == "stall":
                await self._until_gone(request, key)
            elif action.clean:
                await resp.write_eof()
            else:
                _abort(request)
        except ConnectionError:
            self.disconnects.record(key)
        return resp

    # ---- endpoints ------------------------------------------------------------------------

    def chat(self, call: Call) -> Reply:
        body = call.json()
        model, messages = call.need("model"), call.need("messages")
        if not isinstance(messages, list):
            raise ApiError(400, "Invalid type for 'messages': expected an array.", param="messages")
        stream = bool(body.get("stream"))
        so = body.get("stream_options")
        if so and not stream:
            raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' "
                           "is enabled.", param="stream_options")
        prompt = sum(_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        cid, created = f"chatcmpl-{_RUN}{next(_IDS):016x}", int(time.time())
        tool = _pick_tool(body)
        finish = "stop"
        if tool is not None:
            fn = tool["function"]
            args = orjson.dumps(_sample(fn.get("parameters"), fn.get("parameters") or {}) or {})
            call_id = f"call_{_RUN}{next(_IDS):016x}"
            frags = _split(args.decode(), max(1, self.opts.chunks))
            n_out, finish = len(frags), "tool_calls"
            message: dict[str, Any] = {
                "role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function",
                     "function": {"name": fn["name"], "arguments": args.decode()}}],
                "refusal": None, "annotations": []}
            deltas = [orjson.dumps({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call_id, "type": "function",
                 "function": {"name": fn["name"], "arguments": ""}}], "refusal": None})]
            deltas += [orjson.dumps({"tool_calls": [{"index": 0, "function": {"arguments": f}}]})
                       for f in frags]
        else:
            texts = self._texts(body)
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(limit, int) and 0 < limit < len(texts):
                texts, finish = texts[:limit], "length"
            n_out = len(texts)
            message = {"role": "assistant", "content": "".join(texts), "refusal": None,
                       "annotations": []}
            deltas = [_ROLE_DELTA] + ([orjson.dumps({"content": t}) for t in texts]
                                      if body.get("response_format") else self._text_deltas(n_out))
            if "reasoner" in model:  # a reasoning model (DeepSeek-R1's shape): reasoning_content first
                thought = _split(REASONING, 3)
                message["reasoning_content"] = REASONING
                deltas[1:1] = [orjson.dumps({"content": None, "reasoning_content": t}) for t in thought]
                n_out += len(thought)
        usage = _usage(prompt, n_out)
        if not stream:
            return Reply(orjson.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish}],
                "usage": usage, "service_tier": "default", "system_fingerprint": FINGERPRINT}))
        include_usage = bool(isinstance(so, dict) and so.get("include_usage"))
        head = (b'data: {"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":'
                + str(created).encode() + b',"model":' + orjson.dumps(model)
                + b',"service_tier":"default","system_fingerprint":"' + FINGERPRINT.encode()
                + b'","choices":')
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        mid = b',"logprobs":null,"finish_reason":'
        out = [head + b'[{"index":0,"delta":' + d + mid + b"null}]" + tail for d in deltas]
        out.append(head + b'[{"index":0,"delta":{}' + mid + b'"' + finish.encode() + b'"}]' + tail)
        if include_usage:
            out.append(head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
        out.append(_SSE_DONE)
        return Reply(content_type="text/event-stream; charset=utf-8", pieces=out, head=1, sse=True)

    def _texts(self, body: dict[str, Any]) -> list[str]:
        """The reply split into ``chunks`` pieces: the demo sentence, or JSON if asked."""
        n = max(0, self.opts.chunks)
        text = " ".join([_SENTENCE] * max(1, math.ceil(n / 6)))
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            text = orjson.dumps(_sample(schema, schema)).decode()
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            text = orjson.dumps({"message": text}).decode()
        return _split(text, n) if n else []

    def _text_deltas(self, n: int) -> list[bytes]:
        key = (self.opts.chunks, n)
        if key not in self._deltas:
            self._deltas[key] = [orjson.dumps({"content": t}) for t in self._texts({})[:n]]
        return self._deltas[key]

    def completions(self, call: Call) -> Reply:
        body = call.json()
        model, prompt = call.need("model"), call.need("prompt")
        prompt_text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        texts = self._texts({})
        limit = body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(texts):
            texts, finish = texts[:limit], "length"
        usage = {"prompt_tokens": _tokens(prompt_text), "completion_tokens": len(texts),
                 "total_tokens": _tokens(prompt_text) + len(texts)}
        cid, created = f"cmpl-{_RUN}{next(_IDS):016x}", int(time.time())
        base = {"id": cid, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT}

        def choice(text: str, reason: str | None) -> list[dict[str, Any]]:
            return [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]
        if not body.get("stream"):
            return Reply(orjson.dumps({**base, "choices": choice("".join(texts), finish),
                                       "usage": usage}))
        so = body.get("stream_options")
        extra = {"usage": None} if isinstance(so, dict) and so.get("include_usage") else {}
        chunks = [{**base, "choices": choice(t, None), **extra} for t in texts]
        chunks.append({**base, "choices": choice("", finish), **extra})
        if extra:
            chunks.append({**base, "choices": [], "usage": usage})
        out = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [_SSE_DONE]
        return Reply(content_type="text/event-stream; charset=utf-8", pieces=out, sse=True)

    def embeddings(self, call: Call) -> Reply:
        body = call.json()
        model, inp = call.need("model"), call.need("input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"Invalid encoding_format: '{fmt}'.", param="encoding_format")
        if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], int)):
            inp = [inp]
        dims = int(body.get("dimensions") or (3072 if "large" in model else 1536))
        floats, raw = self._emb_base(dims)
        data, tokens = [], 0
        for i, item in enumerate(inp):
            text = item if isinstance(item, str) else str(item)
            tokens += _tokens(item) if isinstance(item, str) else len(item)
            k = zlib.crc32(text.encode()) % dims
            vec: Any = (base64.b64encode(raw[4 * k:4 * (k + dims)]).decode() if fmt == "base64"
                        else floats[k:k + dims])
            data.append({"object": "embedding", "index": i, "embedding": vec})
        return Reply(orjson.dumps({"object": "list", "data": data, "model": model,
                                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))

    def _emb_base(self, dims: int) -> tuple[list[float], bytes]:
        """A unit vector (float32 values) stored twice, so rotations are plain slices."""
        if dims not in self._emb:
            vals = [math.sin(i * 1.618 + self.opts.seed + 1) for i in range(dims)]
            norm = math.sqrt(sum(v * v for v in vals)) or 1.0
            raw = struct.pack(f"<{dims}f", *(v / norm for v in vals)) * 2
            self._emb[dims] = (list(struct.unpack(f"<{2 * dims}f", raw)), raw)
        return self._emb[dims]

    def images(self, call: Call) -> Reply:
        body = call.json()
        path = call.request.path
        if path.endswith(("generations", "edits")):
            call.need("prompt")
        if not path.endswith("generations"):
            images = [p for p in call.parts if p["name"] in ("image", "image[]") and "sha256" in p]
            if not images:
                raise _missing("image")
            if path.endswith("variations") and len(images) > 1:
                raise ApiError(400, "Only one image may be given for variations.", param="image")
        model = str(body.get("model") or "dall-e-2")
        n = int(body.get("n") or 1)
        gpt_image = model.startswith("gpt-image")
        fmt = "b64_json" if gpt_image else (body.get("response_format") or "url")
        url = f"{call.request.scheme}://{call.request.host}/_fake/images/demo.png"
        item: dict[str, Any] = {"b64_json": PNG_B64} if fmt == "b64_json" else {"url": url}
        if model == "dall-e-3":
            item["revised_prompt"] = str(body.get("prompt", ""))
        out: dict[str, Any] = {"created": int(time.time()), "data": [item] * n}
        if gpt_image:
            out["usage"] = {"input_tokens": 10, "output_tokens": 272 * n,
                            "total_tokens": 10 + 272 * n,
                            "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}}
        return Reply(orjson.dumps(out))

    def speech(self, call: Call) -> Reply:
        call.need("model"), call.need("input"), call.need("voice")
        fmt = call.json().get("response_format") or "mp3"
        if fmt not in _AUDIO:
            raise ApiError(400, f"Invalid response_format: '{fmt}'.", param="response_format")
        ctype, data = _AUDIO[fmt]
        n = max(2, self.opts.chunks)
        step = math.ceil(len(data) / n)
        return Reply(content_type=ctype, pieces=[data[i:i + step]
                                                 for i in range(0, len(data), step)])

    def transcription(self, call: Call) -> Reply:
        if not call.files:
            raise _missing("file")
        call.need("model")
        fmt = call.fields.get("response_format") or "json"
        text = _TRANSCRIPT
        if fmt == "text":
            return Reply(text.encode() + b"\n", "text/plain; charset=utf-8")
        if fmt in ("srt", "vtt"):
            sep = "," if fmt == "srt" else "."
            cue = f"00:00:00{sep}000 --> 00:00:01{sep}000\n{text}\n"
            return Reply(("1\n" + cue if fmt == "srt" else "WEBVTT\n\n" + cue).encode(),
                         "text/plain; charset=utf-8")
        if fmt == "verbose_json":
            task = "translate" if call.request.path.endswith("translations") else "transcribe"
            seg = {"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": text, "tokens": [1],
                   "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0,
                   "no_speech_prob": 0.01}
            return Reply(orjson.dumps({"task": task, "language": "english", "duration": 1.0,
                                       "text": text, "segments": [seg]}))
        return Reply(orjson.dumps({"text": text, "usage": {"type": "duration", "seconds": 1}}))

    def rerank(self, call: Call) -> Reply:
        """Jina's rerank: results sorted by relevance (query words found in the document, then the
        document's place: deterministic), top_n of them, documents returned unless asked not to."""
        body = call.json()
        model, query, docs = call.need("model"), call.need("query"), call.need("documents")
        if not isinstance(docs, list) or not docs:
            raise ApiError(400, "'documents' must be a non-empty list.", param="documents")
        texts = [d if isinstance(d, str) else str(d.get("text", "")) if isinstance(d, dict) else "" for d in docs]
        words = set(str(query).lower().split())

        def score(i: int) -> float:
            found = words & set(texts[i].lower().split())
            return round(len(found) / (len(words) or 1) * 0.9 + 0.09 / (i + 1), 6)

        order = sorted(range(len(texts)), key=lambda i: (-score(i), i))
        top_n = body.get("top_n")
        if isinstance(top_n, int) and top_n > 0:
            order = order[:top_n]
        results: list[dict[str, Any]] = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": score(i)}
            if body.get("return_documents", True):
                item["document"] = {"text": texts[i]}
            results.append(item)
        tokens = _tokens(str(query)) + sum(_tokens(t) for t in texts)
        return Reply(orjson.dumps({"model": model, "usage": {"total_tokens": tokens}, "results": results}))

    def moderations(self, call: Call) -> Reply:
        inp = call.need("input")
        count = len(inp) if isinstance(inp, list) and all(isinstance(x, str) for x in inp) else 1
        model = call.json().get("model") or "omni-moderation-latest"
        return Reply(orjson.dumps({"id": f"modr-{_RUN}{next(_IDS):016x}", "model": model,
                                   "results": [_MOD_RESULT] * count}))

    def models(self, call: Call) -> Reply:
        wanted = call.request.match_info.get("model")
        objs = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
                for m in self.opts.models]
        if wanted is None:
            return Reply(orjson.dumps({"object": "list", "data": objs}))
        for obj in objs:
            if obj["id"] == wanted:
                return Reply(orjson.dumps(obj))
        raise ApiError(404, f"The model '{wanted}' does not exist or you do not have access to "
                       "it.", code="model_not_found")

    def not_found(self, call: Call) -> Reply:
        req = call.request
        raise ApiError(404, f"Invalid URL ({req.method} {req.path})", code=None)


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _pick_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool to call: the first offered (or the one tool_choice names), unless the conversation ends with
    a tool's result, which is answered with text (so an agent loop ends, as with a real model)."""
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and "function" in t]
    choice = body.get("tool_choice")
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if not tools or choice == "none" or (last.get("role") == "tool" and choice in (None, "auto")):
        return None
    if isinstance(choice, dict) and "function" in choice:
        name = choice["function"].get("name")
        return next((t for t in tools if t["function"].get("name") == name), tools[0])
    return tools[0]


def _req_id() -> str:
    return f"req_{_RUN}{next(_IDS):024x}"


def _error(exc: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=exc.status, body=exc.body, headers={
        "Content-Type": "application/json", "x-request-id": _req_id(), **(headers or {})})


def _status_reply(action: Action) -> web.Response:
    headers = {}
    if action.retry_after is not None:
        ra = action.retry_after
        headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
    if action.body is None:
        return _error(ApiError(action.code, _ERR_MESSAGES.get(action.code, "Error.")), headers)
    body = action.body
    if not isinstance(body, (bytes, str)):
        body = orjson.dumps(body)
    return web.Response(status=action.code, body=body.encode() if isinstance(body, str) else body,
                        headers={"Content-Type": "application/json", **headers})


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _serve_png(request: web.Request) -> web.Response:
    return web.Response(body=PNG, content_type="image/png")


def build_app(opts: FakeOptions | None = None) -> web.Application:
    """Create the fake upstream application (see the module docstring for the hooks)."""
    from bench.fake_responses import RESPONSES, ResponsesFake  # it builds on this module

    fake = FakeUpstream(opts or FakeOptions())
    responses = ResponsesFake(fake)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[OPTIONS], app[RECORDS], app[SCRIPT] = fake.opts, fake.records, fake.script
    app[DISCONNECTS], app[RESPONSES] = fake.disconnects, responses.store
    routes = [("POST", "chat/completions", fake.chat), ("POST", "completions", fake.completions),
              ("POST", "embeddings", fake.embeddings), ("POST", "moderations", fake.moderations),
              ("POST", "rerank", fake.rerank),
              ("POST", "images/generations", fake.images), ("POST", "images/edits", fake.images),
              ("POST", "images/variations", fake.images), ("POST", "audio/speech", fake.speech),
              ("POST", "audio/transcriptions", fake.transcription),
              ("POST", "audio/translations", fake.transcription),
              ("GET", "models", fake.models), ("GET", "models/{model:.+}", fake.models),
              *responses.routes()]
    for prefix in ("/v1/", "/"):
        for method, path, build in routes:
            app.router.add_route(method, prefix + path, fake.route(build))
    app.router.add_get("/_fake/images/demo.png", _serve_png)
    app.router.add_route("*", "/{tail:.*}", fake.route(fake.not_found))
    return app


async def _serve(args: argparse.Namespace) -> None:
    opts = FakeOptions(latency_ms=args.latency_ms, chunks=args.chunks,
                       chunk_delay_ms=args.chunk_delay_ms, fail_rate=args.fail_rate,
                       fail_status=args.fail_status, seed=args.seed, record=False)
    if args.models:
        opts.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    runner = web.AppRunner(build_app(opts), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=4096, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else args.port
    print(f"fake upstream listening on http://{args.host}:{port}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="", help="comma-separated model ids to serve")
    args = p.parse_args(argv)
    try:
        import uvloop
        uvloop.run(_serve(args))
    except ImportError:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    # Run the package's copy of this module, the one bench.fake_responses imports (under -m this
    # file is __main__, a second copy whose ApiError the Responses routes would not raise).
    from bench.fake_upstream import main as _main
    _main()
