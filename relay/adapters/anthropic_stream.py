"""Anthropic Messages stream events -> OpenAI chat.completion.chunk events, for channels of type `anthropic`.

One AnthropicStream per request: text, thinking and tool-use deltas become chunk deltas as they arrive,
the response_format tool's input streams as the message's text, and message_stop ends with `[DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..sse import SSEParser, encode_event
from ..tokens import CompletionCounter
from ..types import Usage
from .anthropic_response import ERROR_TYPES, FINISH_REASONS, from_anthropic_usage, to_openai_usage

__all__ = ["AnthropicStream"]


class AnthropicStream:
    """Messages API stream events in, OpenAI chat.completion.chunk events out. One per request."""

    __slots__ = (
        "_created",
        "_finish",
        "_id",
        "_model",
        "_parser",
        "_schema_blocks",
        "_schema_tool",
        "_text",
        "_tool_index",
        "_usage_raw",
        "_wants_usage",
        "done",
        "events",
        "usage",
    )

    def __init__(
        self, model: str, wants_usage: bool, schema_tool: str | None = None, created: int | None = None
    ) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self._parser = SSEParser()
        self._text = CompletionCounter(model)
        self._model = model
        self._created = int(time.time()) if created is None else created
        self._id = "chatcmpl-anthropic"
        self._wants_usage = wants_usage
        self._schema_tool = schema_tool
        self._schema_blocks: set[int] = set()
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._finish: str | None = None
        self._usage_raw: dict[str, Any] = {}

    @property
    def completion(self) -> CompletionCounter:
        return self._text

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._parser.feed(chunk):
            self.events += 1
            self._event(ev.event, ev.data, out)
        return b"".join(out)

    def close(self) -> bytes:
        self._parser.close()
        return b""

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return encode_event(orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }))

    def _content(self, text: str) -> bytes:
        self._text.add(orjson.dumps(text)[1:-1])
        return self._chunk({"content": text})

    def _event(self, name: str, data: str, out: list[bytes]) -> None:
        if name == "ping" or not data:
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type", name)
        if kind == "error" or name == "error":
            found = obj.get("error")
            err: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
            etype = err.get("type") or "api_error"
            body = {"error": {"message": err.get("message") or "The upstream reported an error.",
                              "type": ERROR_TYPES.get(etype, "server_error"), "param": None, "code": etype}}
            out.append(encode_event(orjson.dumps(body)))
        elif kind == "message_start":
            msg = obj.get("message") or {}
            self._id = msg.get("id") or self._id
            self._take_usage(msg.get("usage"))
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "content_block_start":
            block, index = obj.get("content_block") or {}, obj.get("index", 0)
            if block.get("type") == "text" and block.get("text"):
                out.append(self._content(block["text"]))
            elif block.get("type") == "redacted_thinking":
                out.append(self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block.get("data") or ""}]}))
            elif block.get("type") == "tool_use":
                if self._schema_tool is not None and block.get("name") == self._schema_tool:
                    self._schema_blocks.add(index)
                    return
                n = self._tool_index[index] = len(self._tool_index)
                out.append(self._chunk({"tool_calls": [{
                    "index": n, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }]}))
        elif kind == "content_block_delta":
            delta, index = obj.get("delta") or {}, obj.get("index", 0)
            dtype = delta.get("type")
            if dtype == "text_delta" and delta.get("text"):
                out.append(self._content(delta["text"]))
            elif dtype == "thinking_delta" and delta.get("thinking"):
                text = delta["thinking"]
                self._text.add(orjson.dumps(text)[1:-1])  # thinking is output, billed as such
                out.append(self._chunk({"reasoning_content": text,
                                        "thinking_blocks": [{"type": "thinking", "thinking": text}]}))
            elif dtype == "signature_delta" and delta.get("signature"):
                out.append(self._chunk({"thinking_blocks": [
                    {"type": "thinking", "thinking": "", "signature": delta["signature"]}]}))
            elif dtype == "input_json_delta" and delta.get("partial_json"):
                part = delta["partial_json"]
                if index in self._schema_blocks:
                    out.append(self._content(part))
                elif index in self._tool_index:
                    self._text.add(orjson.dumps(part)[1:-1])
                    out.append(self._chunk({"tool_calls": [{"index": self._tool_index[index],
                                                            "function": {"arguments": part}}]}))
        elif kind == "message_delta":
            self._take_usage(obj.get("usage"))
            stop = (obj.get("delta") or {}).get("stop_reason")
            if self._schema_blocks and stop == "tool_use":
                self._finish = "stop"
            else:
                self._finish = FINISH_REASONS.get(stop or "", "stop")
            out.append(self._chunk({}, self._finish))
        elif kind == "message_stop":
            if self._finish is None:
                out.append(self._chunk({}, "stop"))
            if self._wants_usage and self.usage is not None:
                out.append(encode_event(orjson.dumps({
                    "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                    "model": self._model, "choices": [], "usage": to_openai_usage(self.usage),
                })))
            out.append(b"data: [DONE]\n\n")
            self.done = True

    def _take_usage(self, usage: Any) -> None:
        """message_start carries the input counts, message_delta the cumulative output (and, lately, input)."""
        if not isinstance(usage, Mapping):
            return
        for k, v in usage.items():
            if isinstance(v, int):
                self._usage_raw[k] = v
        self.usage = from_anthropic_usage(self._usage_raw)
