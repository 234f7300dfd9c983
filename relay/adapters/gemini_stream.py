"""Gemini's SSE stream -> OpenAI chat.completion.chunk events, for channels of type `gemini`.

One GeminiStream per request. Gemini's stream has no end event: it is complete when every candidate
reported a finishReason; the closing chunks, the usage chunk and `[DONE]` go out when the body ends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..sse import SSEParser
from ..tokens import CompletionCounter
from ..types import RelayRequest, Usage
from .gemini_response import finish_reason, from_gemini_usage, to_openai_usage, tool_call_id, with_signature

__all__ = ["GeminiStream"]


class GeminiStream:
    """Gemini SSE (one GenerateContentResponse per event) -> OpenAI chat.completion.chunk frames."""

    __slots__ = (
        "_calls",
        "_created",
        "_finish",
        "_id",
        "_meta",
        "_parser",
        "_req",
        "_started",
        "_text",
        "done",
        "events",
        "usage",
    )

    def __init__(self, req: RelayRequest) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self._parser = SSEParser()
        self._req = req
        self._id = "chatcmpl-" + req.id
        self._created = int(time.time())
        self._started: set[int] = set()  # candidates whose role chunk went out
        self._calls: dict[int, int] = {}  # tool calls emitted per candidate
        self._finish: dict[int, str] = {}  # candidate -> OpenAI finish_reason, once Gemini gave one
        self._meta: Mapping[str, Any] = {}
        self._text = CompletionCounter(req.model)

    @property
    def completion(self) -> CompletionCounter:
        return self._text

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
               "model": self._req.model, "choices": choices, **extra}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return self._frame([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._parser.feed(chunk):
            if not ev.data:
                continue
            self.events += 1
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self._event(obj, out)
        return b"".join(out)

    def _event(self, obj: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(obj.get("error"), Mapping):
            err = obj["error"]
            out.append(b"data: " + orjson.dumps({"error": {
                "message": str(err.get("message", "upstream error")), "type": "server_error", "param": None,
                "code": str(err.get("status") or "upstream_error"),
            }}) + b"\n\n")
            return
        if obj.get("usageMetadata"):
            self._meta = obj["usageMetadata"]
        for i, cand in enumerate(obj.get("candidates") or ()):
            index = cand.get("index", i)
            if index not in self._started:
                self._started.add(index)
                out.append(self._delta(index, {"role": "assistant", "content": ""}))
            for part in (cand.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    thought = part.get("text")
                    if isinstance(thought, str) and thought:
                        self._text.add(orjson.dumps(thought)[1:-1])  # thinking is output, billed as such
                        out.append(self._delta(index, {"reasoning_content": thought}))
                    continue
                text = part.get("text")
                if isinstance(text, str) and text:
                    self._text.add(orjson.dumps(text)[1:-1])
                    out.append(self._delta(index, {"content": text}))
                fc = part.get("functionCall")
                if isinstance(fc, Mapping):
                    n = self._calls.get(index, 0)
                    self._calls[index] = n + 1
                    name = fc.get("name", "")
                    args = orjson.dumps(fc.get("args") or {})
                    self._text.add(orjson.dumps(args.decode())[1:-1])
                    out.append(self._delta(index, {"tool_calls": [with_signature({
                        "index": n, "id": tool_call_id(index, n, name), "type": "function",
                        "function": {"name": name, "arguments": args.decode()},
                    }, part)]}))
            if cand.get("finishReason"):
                self._finish[index] = finish_reason(cand["finishReason"], index in self._calls)
        if not self._started and (obj.get("promptFeedback") or {}).get("blockReason"):
            self._started.add(0)
            out.append(self._delta(0, {"role": "assistant", "content": ""}))
            self._finish[0] = "content_filter"
        if self._finish and all(i in self._finish for i in self._started):
            self.done = True
            self.usage = from_gemini_usage(self._meta) if self._meta else None

    def close(self) -> bytes:
        self._parser.close()
        if not self.done:
            return b""
        out = [
            self._frame([{"index": i, "delta": {}, "logprobs": None, "finish_reason": r}])
            for i, r in sorted(self._finish.items())
        ]
        if self._req.wants_usage and self.usage is not None:
            out.append(self._frame([], usage=to_openai_usage(self.usage, self._meta)))
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)
