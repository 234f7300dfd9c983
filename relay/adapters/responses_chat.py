"""/v1/responses for upstreams without a Responses API, through the channel's own chat adapter.

A Responses request becomes a chat/completions request (responses_request), handed to the channel's chat
adapter, which knows its URL and auth and, for anthropic and gemini channels, translates chat further.
Its answer is OpenAI chat by then, whole or streamed, and becomes a Responses object (responses_output)
or event stream (responses_stream). Errors stay in OpenAI's shape: they are the inner adapter's.

The relay makes the response id ("resp_" + 48 hex digits): `ResponsesStream.id` on streams,
`response_id_of(body)` on the body `parse_response` returns. The upstream keeps no state under it, so
nothing is bound to an account: `ResponsesStream.response_id` and `state_id` are None, and a later call
on that id (GET, previous_response_id) finds no response, which is the truth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import orjson

from ..errors import UpstreamFailure
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .base import Adapter
from .responses_native import response_id_of
from .responses_output import from_chat_completion, new_response_id
from .responses_request import to_chat_request
from .responses_stream import ResponsesStream

__all__ = [
    "ResponsesOverChat",
    "ResponsesStream",
    "chat_request",
    "from_chat_completion",
    "new_response_id",
    "response_id_of",
    "to_chat_request",
]


def chat_request(req: RelayRequest) -> RelayRequest:
    """The chat/completions request a Responses request becomes (raises InvalidRequest)."""
    body = to_chat_request(req.json or {}, req.model, req.stream)
    return dataclasses.replace(
        req, endpoint="chat/completions", body=orjson.dumps(body), json=body, dialect="openai",
        wants_usage=True, headers={}, query="",
    )


class ResponsesOverChat:
    """The Adapter for endpoint "responses" over a chat adapter (openai with responses off, anthropic, gemini)."""

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner

    @property
    def inner(self) -> Adapter:
        return self._inner

    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        return self._inner.build_request(chat_request(req), target)

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        chat_body, usage = self._inner.parse_response(chat_request(req), status, body)
        try:
            obj = orjson.loads(chat_body)
        except orjson.JSONDecodeError:
            return chat_body, usage
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return chat_body, usage
        out, own = from_chat_completion(obj, {**(req.json or {}), "model": req.model}, new_response_id())
        return orjson.dumps(out), own or usage

    def stream_handler(self, req: RelayRequest) -> ResponsesStream:
        return ResponsesStream(req.json, req.model, inner=self._inner.stream_handler(chat_request(req)))

    def state_id(self, req: RelayRequest, body: bytes) -> str | None:
        """The id of state the upstream keeps for this response: none (see the module's docstring)."""
        return None

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        return self._inner.parse_error(status, headers, body)
