"""/v1/messages to OpenAI-dialect channels (`openai`, `azure`): Anthropic's Messages API over chat/completions.

A Messages request is translated into a chat/completions body and handed to the channel's own adapter
(which knows its URL and auth); the answer, whole or streamed, is translated back:

- `system` becomes a leading system message; text and image blocks become content parts; assistant
  `tool_use` blocks become `tool_calls`, user `tool_result` blocks become `tool` messages (placed before
  the rest of that user turn); thinking blocks are dropped (an OpenAI-dialect API has no place for them).
  `thinking` becomes `reasoning_effort` for models whose reasoning style is `effort` (OpenAI's o-series and
  gpt-5: see relay.adapters.thinking), and is dropped for the rest. `tools`, `tool_choice`
  (auto/any/tool/none, `disable_parallel_tool_use`), `stop_sequences`, `max_tokens`, `temperature`,
  `top_p` and `metadata.user_id` map to their counterparts. Streams ask for `stream_options.include_usage`.
- The answer becomes a `message` with text and tool_use blocks, and a thinking block first when the
  upstream reasoned in `reasoning_content` (DeepSeek-R1, Qwen; `reasoning` on some others; its signature
  is empty: there is none to give); finish_reason stop/length/tool_calls becomes stop_reason
  end_turn/max_tokens/tool_use. A stream becomes Anthropic's event sequence: message_start,
  content_block_start/delta/stop (thinking_delta, text_delta, input_json_delta), message_delta (stop_reason
  and usage), message_stop.
- Upstream error bodies are rewritten in Anthropic's error shape, with the same status.

The request translation is in messages_request.py, the answer's in messages_output.py, the stream's in
messages_stream.py; this module is the adapter that puts them together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import orjson

from ..errors import UpstreamFailure, anthropic_error_body
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .base import Adapter
from .messages_output import chat_usage, from_openai_completion, to_anthropic_usage
from .messages_request import to_openai_chat
from .messages_stream import MessagesStream

__all__ = ["MessagesOverChat", "MessagesStream", "from_openai_completion", "to_anthropic_usage", "to_openai_chat"]


# -- the adapter -----------------------------------------------------------------------------------------


class MessagesOverChat:
    """A Messages request served by an OpenAI-dialect channel, through that channel's own adapter."""

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner

    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        reasoning = target.reasoning.for_model(target.upstream_model)
        body = to_openai_chat(req.json or {}, req.model, req.stream, reasoning)
        chat = dataclasses.replace(
            req, endpoint="chat/completions", body=orjson.dumps(body), json=body, dialect="openai",
            wants_usage=True, headers={},
        )
        return self._inner.build_request(chat, target)

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, None
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return body, chat_usage(obj.get("usage")) if isinstance(obj, dict) else None
        out, usage = from_openai_completion(obj, req.model)
        return orjson.dumps(out), usage

    def stream_handler(self, req: RelayRequest) -> MessagesStream:
        return MessagesStream(req.model)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        failure = self._inner.parse_error(status, headers, body)
        message = f"The upstream answered HTTP {status}."
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        failure.body, failure.content_type = anthropic_error_body(status, message), "application/json"
        return failure
