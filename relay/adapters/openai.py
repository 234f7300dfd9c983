"""Channels of type `openai`: any OpenAI-compatible API (OpenAI, DeepSeek, Qwen, GLM, Moonshot, vLLM).

The client already speaks this dialect, so bodies go through untouched but for the model name and, on
streams, `stream_options.include_usage` (so the relay can bill). Streams are forwarded as they arrive; only
a run of events that holds a non-null usage object is parsed at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..endpoints import ENDPOINTS
from ..errors import UpstreamFailure
from ..sse import EventSplitter, has_done, iter_events
from ..tokens import CompletionCounter
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .base import DeliveredText, StreamHandler, classify_status, encode_form, extract_usage_object

__all__ = ["OpenAIAdapter", "OpenAIPassthrough", "usage_from_openai"]

# Endpoints whose streams carry usage only when asked through stream_options.
_STREAM_USAGE_ENDPOINTS = frozenset(e.name for e in ENDPOINTS.values() if e.stream_usage_option)


def usage_from_openai(obj: Mapping[str, Any] | None) -> Usage | None:
    """Chat's usage (prompt/completion tokens) or the Responses API's (input/output tokens), with the
    prompt tokens served from the upstream's cache."""
    if not obj:
        return None
    prompt = obj.get("prompt_tokens", obj.get("input_tokens", 0))
    completion = obj.get("completion_tokens", obj.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = obj.get("prompt_tokens_details") or obj.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    usage = Usage(prompt, completion, "upstream", cached if isinstance(cached, int) and cached > 0 else 0)
    # cache writes: the Responses API's input_tokens_details.cache_write_tokens, or the top-level
    # cache_creation_input_tokens of OpenAI-compatible proxies in front of Claude (LiteLLM)
    written = obj.get("cache_creation_input_tokens")
    if written is None and isinstance(details, Mapping):
        written = details.get("cache_write_tokens")
    if isinstance(written, int) and 0 < written <= prompt - usage.cached_tokens:
        usage.cache_write_tokens = written
    return usage


def _has_usage_object(block: bytes) -> bool:
    """True when some `"usage":` in block is followed by an object, not null."""
    i = block.find(b'"usage"')
    while i >= 0:
        j = i + 7
        while j < len(block) and block[j] in b" \t:":
            j += 1
        if block[j : j + 1] == b"{":
            return True
        i = block.find(b'"usage"', j)
    return False


class OpenAIPassthrough:
    """The zero-copy stream path: whole events go out as they came in (the text delivered is counted only
    when the upstream gives no usage: see DeliveredText)."""

    __slots__ = ("_delivered", "_keep_usage_chunk", "_split", "done", "events", "usage")

    # A JSON string value the client reads as text (its raw body, escapes as written): content (and
    # reasoning_content), reasoning, refusal, legacy completions' text, tool-call arguments. The keys are
    # factored (about 10% faster than a plain alternation); a value never spans a line (JSON escapes raw
    # newlines), so a malformed event cannot pull in the next one.
    TEXT_VALUES = re.compile(
        rb'"(?:content|re(?:asoning(?:_content)?|fusal)|arguments|text)":[ \t]*"([^"\\\n]*(?:\\.[^"\\\n]*)*)"'
    )

    def __init__(self, keep_usage_chunk: bool, model: str = "") -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self._split = EventSplitter()
        self._keep_usage_chunk = keep_usage_chunk
        self._delivered = DeliveredText(self.TEXT_VALUES, model)

    @property
    def completion(self) -> CompletionCounter:
        """The text delivered so far (error events excluded), as raw fragments ready to count."""
        return self._delivered.counter

    def feed(self, chunk: bytes) -> bytes:
        block = self._split.feed(chunk)
        if not block:
            return block
        self.events += block.count(b"data:")
        self._delivered.hold(block)
        if b'"usage"' in block and _has_usage_object(block):
            block = self._take_usage(block)
        if has_done(block):
            self.done = True
        return block

    def close(self) -> bytes:
        return self._split.flush()

    def _take_usage(self, block: bytes) -> bytes:
        kept: list[bytes] = []
        dropped = False
        for event in iter_events(block):
            if b'"usage"' in event and _has_usage_object(event):
                data = b"".join(
                    line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
                )
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    obj = None
                if isinstance(obj, dict):
                    self.usage = usage_from_openai(obj.get("usage")) or self.usage
                    if not self._keep_usage_chunk and obj.get("choices") == []:
                        dropped = True
                        continue
            kept.append(event)
        if not dropped:
            return block
        return b"".join(e + b"\n\n" for e in kept)


class OpenAIAdapter:
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        url = f"{target.base_url}/{req.path or req.endpoint}"
        if req.query:
            url += "?" + req.query
        headers = {"Authorization": f"Bearer {target.api_key}", **target.extra_headers}
        if req.method != "POST" or (req.json is None and not req.form):  # a call on a stored object
            return UpstreamRequest(req.method, url, headers, None)
        if req.form:
            content_type, factory = encode_form(req.form, {"model": target.upstream_model})
            headers["Content-Type"] = content_type
            return UpstreamRequest("POST", url, headers, factory)
        headers["Content-Type"] = "application/json"
        body = req.body
        changes: dict[str, Any] = {}
        if target.upstream_model != req.model:
            changes["model"] = target.upstream_model
        if req.stream and not req.wants_usage and req.endpoint in _STREAM_USAGE_ENDPOINTS:
            options = req.json.get("stream_options") if req.json else None
            changes["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        if changes and req.json is not None:
            body = orjson.dumps({**req.json, **changes})
        return UpstreamRequest("POST", url, headers, body)

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        return body, usage_from_openai(extract_usage_object(body))

    def stream_handler(self, req: RelayRequest) -> StreamHandler:
        return OpenAIPassthrough(keep_usage_chunk=req.wants_usage, model=req.model)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        failure = classify_status(status, headers, body, headers.get("content-type", "application/json"))
        if status == 429 and b"insufficient_quota" in body:
            failure.reason = "upstream account out of quota"
        return failure
