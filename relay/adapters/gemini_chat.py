"""The Gemini-native routes on channels that are not Gemini's (openai, azure, anthropic), through the channel's
own chat adapter.

generateContent / streamGenerateContent become a chat/completions request (gemini_request), handed to the
channel's chat adapter, which knows its URL and auth and, for anthropic channels, translates chat further.
Its answer is OpenAI chat by then, whole or streamed, and becomes Gemini's (gemini_output).
embedContent / batchEmbedContents become an /embeddings request the same way (openai and azure only).
Upstream errors are rewritten in Google's error shape, with the same status.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from urllib.parse import parse_qsl

import orjson

from ..errors import UpstreamFailure, google_error_body
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .base import Adapter
from .gemini_native import gemini_method
from .gemini_output import GeminiChatStream, from_chat_completion, from_embeddings
from .gemini_request import to_chat_request, to_embeddings_request

__all__ = ["GeminiOverChat", "openai_request"]


def openai_request(req: RelayRequest) -> RelayRequest:
    """The OpenAI request (chat/completions or embeddings) a Gemini request becomes (raises InvalidRequest).

    The client's query string stays behind: it may hold the relay's own key (`?key=`)."""
    method = gemini_method(req)
    if method in ("embedContent", "batchEmbedContents"):
        body = to_embeddings_request(req.json or {}, req.model, method == "batchEmbedContents")
        endpoint = "embeddings"
    else:
        body = to_chat_request(req.json or {}, req.model, req.stream)
        endpoint = "chat/completions"
    return dataclasses.replace(
        req, endpoint=endpoint, body=orjson.dumps(body), json=body, dialect="openai", wants_usage=True,
        headers={}, query="",
    )


def _response_id() -> str:
    return secrets.token_urlsafe(16)


class GeminiOverChat:
    """The Adapter for the Gemini-native routes over an OpenAI-dialect adapter."""

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner

    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        return self._inner.build_request(openai_request(req), target)

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        inner_req = openai_request(req)
        out_body, usage = self._inner.parse_response(inner_req, status, body)
        try:
            obj = orjson.loads(out_body)
        except orjson.JSONDecodeError:
            return out_body, usage
        if not isinstance(obj, dict):
            return out_body, usage
        if inner_req.endpoint == "embeddings":
            return orjson.dumps(from_embeddings(obj, gemini_method(req) == "batchEmbedContents")), usage
        out, own = from_chat_completion(obj, req.model, _response_id())
        return orjson.dumps(out), own or usage

    def stream_handler(self, req: RelayRequest) -> GeminiChatStream:
        array = not any(k == "alt" and v == "sse" for k, v in parse_qsl(req.query))
        inner = self._inner.stream_handler(openai_request(req))
        return GeminiChatStream(inner, req.model, _response_id(), array=array)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        failure = self._inner.parse_error(status, headers, body)
        message = f"The upstream answered HTTP {status}."
        try:
            obj = orjson.loads(failure.body or body)
        except orjson.JSONDecodeError:
            obj = None
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        failure.body, failure.content_type = google_error_body(status, message), "application/json"
        return failure
