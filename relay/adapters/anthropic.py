"""Channels of type `anthropic`: Anthropic's Messages API (POST {base_url}/v1/messages) for OpenAI clients.

A chat/completions request is translated into a Messages request, and the answer (whole or streamed) back
into OpenAI's chat.completion shapes:

- `system` (and `developer`) messages, wherever they stand, become the top-level `system`; consecutive
  user or assistant turns are merged into one turn of several content blocks, since the API wants turns
  to alternate. `tool` messages become `tool_result` blocks of a user turn; assistant `tool_calls` become
  `tool_use` blocks. Images: https/http URLs are passed as URL sources (the relay never fetches them),
  data URIs as base64 sources.
- `max_tokens` is required by the API: `max_completion_tokens`, else `max_tokens`, else 4096.
  `temperature` is clamped to the API's 0..1; `stop` becomes `stop_sequences`; `user` becomes
  `metadata.user_id`.
- `response_format` json_schema (and json_object) has no direct counterpart, so it is served with a forced
  tool: a tool named after the schema, whose `input_schema` is the schema, with `tool_choice` set to it.
  The tool's input is the answer: it is returned as the message's text content (streamed as it comes),
  with finish_reason `stop`. Combining it with the client's own tools is refused (400).
- `reasoning_effort` becomes `thinking`, thinking blocks come back as `reasoning_content` and
  `thinking_blocks` and go back first in their turn, and `cache_control` marks are carried to the blocks:
  see relay.adapters.thinking.
- Anthropic error bodies are rewritten in OpenAI's error shape, with the same status (529 overloaded is
  retried like any 5xx).

The request translation is in anthropic_request.py, the answer's in anthropic_response.py, the stream's in
anthropic_stream.py; this module is the adapter that puts them together.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from ..errors import InvalidRequest, UpstreamFailure
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .anthropic_request import schema_tool_name, to_anthropic_messages, to_anthropic_request
from .anthropic_response import ERROR_TYPES, from_anthropic_message, from_anthropic_usage
from .anthropic_stream import AnthropicStream
from .base import classify_status

__all__ = [
    "AnthropicAdapter", "AnthropicStream", "from_anthropic_message", "from_anthropic_usage", "to_anthropic_messages",
    "to_anthropic_request",
]

API_VERSION = "2023-06-01"


class AnthropicAdapter:
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        if req.endpoint != "chat/completions" or req.json is None:
            raise InvalidRequest(f"'/v1/{req.endpoint}' is not supported for model '{req.model}'.")
        base = target.base_url.rstrip("/")
        url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        headers = {
            "x-api-key": target.api_key,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            **target.extra_headers,
        }
        reasoning = target.reasoning.for_model(target.upstream_model)
        body = to_anthropic_request(req.json, target.upstream_model, req.stream, reasoning)
        return UpstreamRequest("POST", url, headers, orjson.dumps(body))

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, None
        if not isinstance(msg, dict) or msg.get("type") != "message":
            return body, None
        out, usage = from_anthropic_message(msg, req.model, schema_tool_name(req))
        return orjson.dumps(out), usage

    def stream_handler(self, req: RelayRequest) -> AnthropicStream:
        return AnthropicStream(req.model, req.wants_usage, schema_tool_name(req))

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        etype, message = "api_error", f"The upstream answered HTTP {status}."
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict):
            if isinstance(err.get("type"), str):
                etype = err["type"]
            if isinstance(err.get("message"), str):
                message = err["message"]
        otype = ERROR_TYPES.get(etype, "server_error" if status >= 500 else "invalid_request_error")
        shaped = orjson.dumps({"error": {"message": message, "type": otype, "param": None, "code": etype}})
        failure = classify_status(status, headers, shaped, "application/json")
        if etype == "billing_error" or (status == 429 and b"spend_limit" in body):
            failure.reason = "upstream account out of credit"
        return failure
