"""/v1/messages to channels of type `anthropic`: the client already speaks the upstream's dialect.

The body goes through as the client sent it (only `model` is replaced, when the channel maps the name), and
the client's `anthropic-version` and `anthropic-beta` headers go along. Streams are forwarded event by event
as they arrive: only events that hold `"usage"` (message_start, message_delta) are parsed, and the text the
client receives is collected for a count only when the upstream gave no usage (batched, like the OpenAI
passthrough). Upstream errors already are in the client's shape, so they reach it as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import orjson

from ..errors import UpstreamFailure
from ..sse import EventSplitter, has_event, iter_events
from ..tokens import CompletionCounter
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .anthropic import API_VERSION, from_anthropic_usage
from .base import DeliveredText, classify_status, extract_usage_object

__all__ = ["AnthropicNative", "AnthropicPassthrough", "messages_url"]


def messages_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base + ("/messages" if base.endswith("/v1") else "/v1/messages")


def _data(event: bytes) -> bytes:
    return b"".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))


class AnthropicPassthrough:
    """The zero-copy stream path for Messages streams: whole events go out as they came in."""

    __slots__ = ("_delivered", "_split", "_usage_raw", "done", "events", "usage")

    # The string values a client reads as completion: text_delta's text, input_json_delta's partial_json,
    # thinking_delta's thinking (raw JSON string bodies; a value never spans a line).
    TEXT_VALUES = re.compile(rb'"(?:text|partial_json|thinking)":[ \t]*"([^"\\\n]*(?:\\.[^"\\\n]*)*)"')

    def __init__(self, model: str = "") -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self._split = EventSplitter()
        self._delivered = DeliveredText(self.TEXT_VALUES, model)
        self._usage_raw: dict[str, int] = {}

    @property
    def completion(self) -> CompletionCounter:
        return self._delivered.counter

    def feed(self, chunk: bytes) -> bytes:
        block = self._split.feed(chunk)
        if not block:
            return block
        self.events += block.count(b"data:")
        self._delivered.hold(block)
        if b'"usage"' in block:
            self._take_usage(block)
        if has_event(block, b"message_stop"):
            self.done = True
        return block

    def close(self) -> bytes:
        return self._split.flush()

    def _take_usage(self, block: bytes) -> None:
        """message_start holds the input counts, message_delta the cumulative output (and, lately, input)."""
        for event in iter_events(block):
            if b'"usage"' not in event:
                continue
            try:
                obj = orjson.loads(_data(event))
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            usage = obj.get("usage")
            if usage is None and isinstance(obj.get("message"), dict):
                usage = obj["message"].get("usage")
            if not isinstance(usage, dict):
                continue
            for k, v in usage.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    self._usage_raw[k] = v
            self.usage = from_anthropic_usage(self._usage_raw)


def native_request(req: RelayRequest, target: Target, url: str) -> UpstreamRequest:
    """The client's Messages-API body as it came (but for the model name) to `url`, with the account's key and
    the client's anthropic-version / anthropic-beta."""
    headers = {
        "x-api-key": target.api_key,
        "anthropic-version": req.headers.get("anthropic-version") or API_VERSION,
        "content-type": "application/json",
        **target.extra_headers,
    }
    beta = req.headers.get("anthropic-beta")
    if beta:
        headers["anthropic-beta"] = beta
    body = req.body
    if target.upstream_model != req.model and req.json is not None:
        body = orjson.dumps({**req.json, "model": target.upstream_model})
    return UpstreamRequest("POST", url, headers, body)


class AnthropicNative:
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        return native_request(req, target, messages_url(target.base_url))

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        return body, from_anthropic_usage(extract_usage_object(body))

    def stream_handler(self, req: RelayRequest) -> AnthropicPassthrough:
        return AnthropicPassthrough(req.model)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        failure = classify_status(status, headers, body, headers.get("content-type", "application/json"))
        if (status == 429 and b"spend_limit" in body) or b'"billing_error"' in body:
            failure.reason = "upstream account out of credit"
        return failure
