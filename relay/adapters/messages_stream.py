"""/v1/messages over chat/completions, the stream side: chat.completion.chunk events -> Anthropic stream events.

One MessagesStream per request: message_start, then content_block_start/delta/stop per thinking, text and
tool_use block, message_delta with the stop_reason and usage, message_stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import anthropic_error_body
from ..sse import DONE, SSEParser, encode_event
from ..tokens import CompletionCounter
from ..types import Usage
from .messages_output import (
    STOP_REASONS,
    anthropic_message_id,
    chat_usage,
    new_tool_id,
    reasoning_of,
    to_anthropic_usage,
)

__all__ = ["MessagesStream"]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": name, **data}), name)


class MessagesStream:
    """OpenAI chat.completion.chunk events in, Anthropic Messages stream events out. One per request."""

    __slots__ = (
        "_block",
        "_blocks",
        "_finish",
        "_id",
        "_model",
        "_parser",
        "_started",
        "_text",
        "_thinking",
        "_tools",
        "done",
        "events",
        "usage",
    )

    def __init__(self, model: str, message_id: str | None = None) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self._parser = SSEParser()
        self._text = CompletionCounter(model)
        self._model = model
        self._id = message_id
        self._started = False
        self._block: int | None = None  # the index of the open content block
        self._blocks = 0  # content blocks started so far
        self._tools: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self._finish: str | None = None
        self._thinking: int | None = None  # the index of the last thinking block

    @property
    def completion(self) -> CompletionCounter:
        return self._text

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._parser.feed(chunk):
            self.events += 1
            self._on(ev.data, out)
        return b"".join(out)

    def close(self) -> bytes:
        """A stream that ended without [DONE] but with its finish_reason is complete all the same."""
        self._parser.close()
        if self.done or self._finish is None:
            return b""
        out: list[bytes] = []
        self._end(out)
        return b"".join(out)

    def _start(self, upstream_id: Any, out: list[bytes]) -> None:
        self._started = True
        if self._id is None:
            self._id = anthropic_message_id(upstream_id)
        out.append(_event("message_start", {"message": {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
        }}))

    def _close_block(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(_event("content_block_stop", {"index": self._block}))
            self._block = None

    def _open_block(self, block: dict[str, Any], out: list[bytes]) -> int:
        self._close_block(out)
        index = self._block = self._blocks
        self._blocks += 1
        out.append(_event("content_block_start", {"index": index, "content_block": block}))
        return index

    def _on(self, data: str, out: list[bytes]) -> None:
        if not data:
            return
        if data == DONE.decode():
            if not self.done:
                self._end(out)
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        if "error" in obj and isinstance(obj["error"], Mapping):
            message = obj["error"].get("message") or "The upstream reported an error."
            out.append(b"event: error\ndata: " + anthropic_error_body(500, str(message)) + b"\n\n")
            return
        if not self._started:
            self._start(obj.get("id"), out)
        if isinstance(obj.get("usage"), Mapping):
            self.usage = chat_usage(obj["usage"]) or self.usage
        for choice in obj.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta") or {}
            thought = reasoning_of(delta)
            if isinstance(thought, str) and thought:
                if self._block is None or self._block != self._thinking:
                    self._thinking = self._open_block({"type": "thinking", "thinking": "", "signature": ""}, out)
                self._text.add(orjson.dumps(thought)[1:-1])
                out.append(_event("content_block_delta",
                                  {"index": self._block, "delta": {"type": "thinking_delta", "thinking": thought}}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._block is None or self._block in self._tools.values() or self._block == self._thinking:
                    self._open_block({"type": "text", "text": ""}, out)
                self._text.add(orjson.dumps(text)[1:-1])
                out.append(_event("content_block_delta",
                                  {"index": self._block, "delta": {"type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or ():
                self._tool_delta(call, out)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]

    def _tool_delta(self, call: Any, out: list[bytes]) -> None:
        if not isinstance(call, Mapping):
            return
        n = call.get("index", 0)
        fn = call.get("function") or {}
        if n not in self._tools:
            self._tools[n] = self._open_block({
                "type": "tool_use", "id": call.get("id") or new_tool_id(), "name": fn.get("name") or "", "input": {},
            }, out)
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            self._text.add(orjson.dumps(args)[1:-1])
            out.append(_event("content_block_delta",
                              {"index": self._tools[n], "delta": {"type": "input_json_delta", "partial_json": args}}))

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._start(None, out)
        self._close_block(out)
        usage = to_anthropic_usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        out.append(_event("message_delta", {
            "delta": {"stop_reason": STOP_REASONS.get(self._finish or "stop", "end_turn"), "stop_sequence": None},
            "usage": usage,
        }))
        out.append(_event("message_stop", {}))
        self.done = True
