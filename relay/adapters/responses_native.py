"""OpenAI's Responses API (/v1/responses) to channels that have it (`openai`, `azure`): passthrough.

The body goes through untouched but for the model name, and the stream is forwarded event by event as it
arrives, as chat streams are (zero copy). A Responses stream carries its usage only in its terminal event
(`response.completed`, `response.incomplete` or `response.failed`), so that one event is parsed, and the
first one (`response.created`) is searched for the response id; no other event is read. A stream is
finished only when its terminal event arrived: an `event:` line of that name at the start of an event,
never text inside one (JSON escapes the newlines a line would need).

Calls on a stored response (GET, DELETE, cancel, input_items) go through the same adapter with the request's
method and path.
"""

from __future__ import annotations

import re

import orjson

from ..sse import EventSplitter, iter_events
from ..tokens import CompletionCounter
from ..types import RelayRequest, Usage
from .azure import AzureAdapter
from .base import DeliveredText, StreamHandler, extract_usage_object
from .openai import OpenAIAdapter, usage_from_openai

__all__ = ["AzureResponsesNative", "ResponsesNative", "ResponsesPassthrough", "error_frame", "response_id_of"]

_TERMINAL = (b"event: response.completed", b"event: response.incomplete", b"event: response.failed")
_ID = re.compile(rb'"id":[ \t]*"(resp_[A-Za-z0-9_-]{1,200})"')
_SEQ = re.compile(rb'"sequence_number":[ \t]*(\d+)')


def response_id_of(body: bytes) -> str | None:
    """The id of a response object (or of the response inside a stream event), by a cheap search."""
    m = _ID.search(body, 0, 4096)
    return m.group(1).decode() if m else None


def error_frame(message: str, code: str, sequence_number: int) -> bytes:
    """A Responses stream's `error` event. The nested `error` makes the openai SDK raise while iterating;
    the top-level fields make it the API's own ResponseErrorEvent."""
    err = {"type": "server_error", "code": code, "message": message, "param": None}
    data = {"type": "error", "code": code, "message": message, "param": None,
            "sequence_number": sequence_number, "error": err}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def _terminal(block: bytes) -> int:
    """Where the block's terminal event starts, or -1."""
    for name in _TERMINAL:
        if block.startswith(name):
            return 0
        i = block.find(b"\n\n" + name)
        if i >= 0:
            return i + 2
    return -1


class ResponsesPassthrough:
    """Whole events go out as they came in; the text delivered (every `delta`) is counted only when no
    usage arrives (see DeliveredText)."""

    __slots__ = ("_binds", "_delivered", "_last", "_split", "done", "events", "response_id", "usage")

    DELTAS = re.compile(rb'"delta":[ \t]*"([^"\\\n]*(?:\\.[^"\\\n]*)*)"')

    def __init__(self, model: str = "", binds: bool = True) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self.response_id: str | None = None  # set once seen, when the upstream keeps the response
        self._binds = binds
        self._split = EventSplitter()
        self._delivered = DeliveredText(self.DELTAS, model)
        self._last = b""

    @property
    def completion(self) -> CompletionCounter:
        return self._delivered.counter

    def feed(self, chunk: bytes) -> bytes:
        block = self._split.feed(chunk)
        if not block:
            return block
        self.events += block.count(b"data:")
        self._last = block
        if self._binds:
            self.response_id = response_id_of(block)
            self._binds = self.response_id is None
        self._delivered.hold(block)
        if b"event: response." in block:
            at = _terminal(block)
            if at >= 0:
                self.done = True
                self._read_usage(block[at:])
        return block

    def close(self) -> bytes:
        return self._split.flush()

    def error_frame(self, message: str, code: str) -> bytes:
        found = _SEQ.findall(self._last)
        return error_frame(message, code, int(found[-1]) + 1 if found else 0)

    def _read_usage(self, block: bytes) -> None:
        for event in iter_events(block):
            data = b"".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            response = obj.get("response") if isinstance(obj, dict) else None
            if isinstance(response, dict):
                self.usage = usage_from_openai(response.get("usage")) or self.usage
                return


class _ResponsesAPI:
    """The Responses API's usage and stream, over a channel adapter that knows URL, auth and model name."""

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        if req.method != "POST" or req.path:  # a stored response read back, deleted or cancelled: not billed
            return body, None
        return body, usage_from_openai(extract_usage_object(body))

    def stream_handler(self, req: RelayRequest) -> StreamHandler:
        return ResponsesPassthrough(req.model, binds=_keeps_state(req))

    def state_id(self, req: RelayRequest, body: bytes) -> str | None:
        """The id of the response the upstream now keeps (None when it keeps none: `store: false`)."""
        return response_id_of(body) if _keeps_state(req) else None


def _keeps_state(req: RelayRequest) -> bool:
    return req.method == "POST" and not req.path and (req.json or {}).get("store") is not False



class ResponsesNative(_ResponsesAPI, OpenAIAdapter):
    pass


class AzureResponsesNative(_ResponsesAPI, AzureAdapter):
    pass
