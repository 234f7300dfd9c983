"""POST /v1/messages/count_tokens: Anthropic's token count, `{"input_tokens": N}`.

- `anthropic` channels have the endpoint (POST {base}/v1/messages/count_tokens): the body goes through as
  the client sent it (only `model` replaced when the channel maps the name), with the client's
  anthropic-version and anthropic-beta headers and its query string (the SDK's `?beta=true`).
- Every other channel type is answered by the relay itself (mode "local"): the request is counted with
  relay.tokens_messages and never reaches the upstream.

Neither is billed; the usage recorded is zero tokens, so a count never draws on a key's token limits.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from ..errors import InvalidRequest, UpstreamFailure
from ..tokens_messages import count_messages_tokens
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .anthropic_native import native_request
from .base import StreamHandler, classify_status

__all__ = ["AnthropicCountTokens", "LocalCountTokens", "count_tokens_url"]


def count_tokens_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base + ("/messages/count_tokens" if base.endswith("/v1") else "/v1/messages/count_tokens")


def _no_stream(req: RelayRequest) -> StreamHandler:
    raise InvalidRequest("count_tokens does not stream.", param="stream")


class AnthropicCountTokens:
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        url = count_tokens_url(target.base_url) + (f"?{req.query}" if req.query else "")
        return native_request(req, target, url)

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        return body, Usage(0, 0, "upstream")

    def stream_handler(self, req: RelayRequest) -> StreamHandler:
        return _no_stream(req)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        return classify_status(status, headers, body, headers.get("content-type", "application/json"))


class LocalCountTokens:
    """Counted by the relay: `answer` replaces the upstream call (see Proxy)."""

    def answer(self, req: RelayRequest, target: Target) -> tuple[bytes, Usage]:
        n = count_messages_tokens(req.json or {}, target.upstream_model)
        return orjson.dumps({"input_tokens": n}), Usage(0, 0, "upstream")

    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        raise InvalidRequest("count_tokens is answered by the relay on this channel.")  # never called: see answer

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        return body, Usage(0, 0, "upstream")

    def stream_handler(self, req: RelayRequest) -> StreamHandler:
        return _no_stream(req)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        return classify_status(status, headers, body, "application/json")
