"""The Gemini-native routes (/v1beta/models/{model}:method) to channels of type `gemini`: passthrough.

The client already speaks the upstream's dialect. The body goes through as the client sent it (the model
is named in the URL, so a mapped name changes only the URL, and the `model` fields of batch embedding and
token-count requests); the channel's key goes in `x-goog-api-key`. The client's query string goes along
without its `key` (the relay's own client key, which never goes upstream).

Streams are always asked of the upstream with `alt=sse` and forwarded event by event as they arrive. No
event is parsed on the way: Gemini repeats `usageMetadata` in every event, so the last run of events that
holds one is kept (a reference) and its last such event parsed once, when the usage is asked for; only an
event that holds a `finishReason` (one per candidate, at the end) is parsed, to tell a clean end (every
candidate asked for finished, the rule the chat translation in gemini_stream.py uses) from a cut stream. An error
object the upstream sends mid-stream goes to the client as it is, and is the stream's end. A client that
asked without `alt=sse` gets Google's other stream format, one JSON array written element by element
(`[{...}\\n,{...}\\n]`), made from the same events without parsing them.

Upstream errors are in the client's shape already and reach it as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from ..errors import UpstreamFailure, google_error_body
from ..sse import EventSplitter, iter_events
from ..tokens import CompletionCounter, prompt_tokens
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .base import DeliveredText
from .gemini import GeminiAdapter, from_gemini_usage

__all__ = ["GeminiNative", "GeminiPassthrough", "gemini_method", "model_resource", "without_key"]

# The header set of the JSON-array stream (the SSE one is the proxy's default).
JSON_STREAM_HEADERS = {"Content-Type": "application/json; charset=UTF-8", "Cache-Control": "no-cache",
                       "X-Accel-Buffering": "no"}


def gemini_method(req: RelayRequest) -> str:
    """The Gemini method a request calls (the endpoint's name after "gemini/")."""
    method = req.endpoint.partition("/")[2]
    return "streamGenerateContent" if method == "generateContent" and req.stream else method


def model_resource(model: str) -> str:
    """models/x or tunedModels/x, as Gemini's URLs name a model."""
    return model if model.startswith(("models/", "tunedModels/")) else "models/" + model


def without_key(query: str) -> list[tuple[str, str]]:
    """The client's query parameters but `key` (and `alt`, which the relay sets itself)."""
    return [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("key", "alt")]


def _api_base(base_url: str) -> str:
    base = base_url.rstrip("/")
    for suffix in ("/v1beta", "/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _renamed(body: Mapping[str, Any], resource: str) -> dict[str, Any]:
    """A body whose inner `model` fields name the upstream's model (batch embeddings, countTokens)."""
    out = dict(body)
    if isinstance(out.get("requests"), list):
        out["requests"] = [{**r, "model": resource} if isinstance(r, Mapping) else r for r in out["requests"]]
    inner = out.get("generateContentRequest")
    if isinstance(inner, Mapping):
        out["generateContentRequest"] = {**inner, "model": resource}
    if "model" in out:
        out["model"] = resource
    return out


class GeminiPassthrough:
    """The zero-copy stream path for Gemini streams (see the module docstring)."""

    __slots__ = (
        "_array",
        "_delivered",
        "_errored",
        "_expected",
        "_finished",
        "_last_usage",
        "_sent",
        "_split",
        "_usage",
        "done",
        "events",
        "headers",
    )

    # The string values a client reads as completion: text parts (thoughts included), raw JSON bodies.
    TEXT_VALUES = re.compile(rb'"text":[ \t]*"([^"\\\n]*(?:\\.[^"\\\n]*)*)"')

    def __init__(self, model: str = "", candidates: int = 1, array: bool = False) -> None:
        self.done = False
        self.events = 0
        self.headers: Mapping[str, str] | None = JSON_STREAM_HEADERS if array else None
        self._split = EventSplitter()
        self._delivered = DeliveredText(self.TEXT_VALUES, model)
        self._last_usage = b""  # the last run of events that held usageMetadata, unparsed
        self._usage: Usage | None = None
        self._finished: set[int] = set()
        self._expected = max(1, candidates)
        self._array = array
        self._sent = False  # the JSON array's first element went out
        self._errored = False  # the upstream itself ended the stream with an error object

    @property
    def usage(self) -> Usage | None:
        if self._last_usage:
            block, self._last_usage = self._last_usage, b""
            event = next(e for e in reversed(iter_events(block)) if b'"usageMetadata"' in e)
            try:
                obj = orjson.loads(_data(event))
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                self._usage = from_gemini_usage(obj.get("usageMetadata")) or self._usage
        return self._usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._usage, self._last_usage = value, b""

    @property
    def completion(self) -> CompletionCounter:
        return self._delivered.counter

    def feed(self, chunk: bytes) -> bytes:
        block = self._split.feed(chunk)
        if not block:
            return block
        self.events += block.count(b"data:")
        self._delivered.hold(block)
        if b'"usageMetadata"' in block:  # in every event Gemini sends: kept, parsed only when asked for
            self._last_usage = block
        if b'"finishReason"' in block or b'{"error"' in block:
            for event in iter_events(block):
                if b'"finishReason"' in event:
                    self._take_finish(event)
                elif _data(event).startswith(b'{"error"'):
                    self._errored = True
        if self._array:
            return self._elements(iter_events(block))
        return block

    def _take_finish(self, event: bytes) -> None:
        try:
            obj = orjson.loads(_data(event))
        except orjson.JSONDecodeError:
            return
        for i, cand in enumerate(obj.get("candidates") or () if isinstance(obj, dict) else ()):
            if isinstance(cand, dict) and cand.get("finishReason"):
                self._finished.add(cand.get("index", i))
        if len(self._finished) >= self._expected:
            self.done = True

    def _elements(self, events: list[bytes]) -> bytes:
        out: list[bytes] = []
        for event in events:
            data = _data(event)
            if data:
                out.append(b"\n," + data if self._sent else b"[" + data)
                self._sent = True
        return b"".join(out)

    def close(self) -> bytes:
        tail = self._split.flush()
        if not self._array:
            return tail
        return (b"\n]" if self._sent else b"[]") if self.done else b""

    def error_frame(self, message: str, code: str) -> bytes:
        """Google's error object, ending the stream in its own format (the SDKs raise on it); none after the
        upstream's own error object (but the JSON array's end)."""
        if self._errored:
            return b"\n]" if self._array else b""
        err = google_error_body(500, message)
        if not self._array:
            return b"data: " + err + b"\r\n\r\n"
        out = (b"\n," if self._sent else b"[") + err + b"\n]"
        self._sent = True
        return out


def _data(event: bytes) -> bytes:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    return b"".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))


class GeminiNative:
    """The Adapter for the Gemini-native routes on gemini channels."""

    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        resource = model_resource(target.upstream_model)
        method = gemini_method(req)
        params = without_key(req.query)
        if method == "streamGenerateContent":
            params.append(("alt", "sse"))
        url = f"{_api_base(target.base_url)}/v1beta/{resource}:{method}"
        if params:
            url += "?" + urlencode(params)
        headers = {**target.extra_headers, "x-goog-api-key": target.api_key, "Content-Type": "application/json"}
        body = req.body
        if target.upstream_model != req.model and req.json is not None and method != "generateContent":
            body = orjson.dumps(_renamed(req.json, resource))
        return UpstreamRequest("POST", url, headers, body)

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        method = gemini_method(req)
        if method == "countTokens":
            return body, Usage(0, 0, "upstream")  # nothing generated, nothing billed
        if method in ("embedContent", "batchEmbedContents"):
            # Gemini's embedding answers carry no usage: the text sent, counted
            return body, Usage(prompt_tokens(req.endpoint, req.json), 0, "estimate")
        i = body.rfind(b'"usageMetadata"')
        if i < 0:
            return body, None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, None
        return body, from_gemini_usage(obj.get("usageMetadata")) if isinstance(obj, dict) else None

    def stream_handler(self, req: RelayRequest) -> GeminiPassthrough:
        config = (req.json or {}).get("generationConfig")
        n = config.get("candidateCount") if isinstance(config, Mapping) else None
        return GeminiPassthrough(req.model, n if isinstance(n, int) else 1, array=not _wants_sse(req.query))

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        failure = GeminiAdapter().parse_error(status, headers, body)  # its reading: a bad key is the account's
        failure.body, failure.content_type = body, headers.get("content-type", "application/json")
        return failure


def _wants_sse(query: str) -> bool:
    return any(k == "alt" and v == "sse" for k, v in parse_qsl(query))
