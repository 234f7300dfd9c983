"""OpenAI answers -> Gemini answers, for the Gemini-native routes on OpenAI-dialect channels. Pure.

- A chat.completion becomes a GenerateContentResponse: one candidate per choice, text as a text part,
  `reasoning_content` as a thought part (`"thought": true`), tool_calls as functionCall parts (with their
  ids), finish_reason stop/tool_calls -> STOP, length -> MAX_TOKENS, content_filter -> SAFETY, and usage as
  usageMetadata (reasoning tokens as thoughtsTokenCount, cached prompt tokens as cachedContentTokenCount).
- A chat stream becomes Gemini's: one GenerateContentResponse per text or thought delta; a tool call's
  argument fragments are held until its choice finishes and go out whole, as Gemini sends a functionCall,
  in the last event, which carries the finishReason of every candidate and the usageMetadata. Framed as
  SSE (`data: ...` + CRLF CRLF, no end sentinel) or, for clients that asked without `alt=sse`, as one JSON
  array written element by element.
- An /embeddings answer becomes an embedContent or batchEmbedContents answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import google_error_body
from ..sse import DONE, SSEParser
from ..tokens import CompletionCounter
from ..types import Usage
from .base import StreamHandler
from .gemini_native import JSON_STREAM_HEADERS
from .openai import usage_from_openai

__all__ = ["GeminiChatStream", "from_chat_completion", "from_embeddings", "to_gemini_usage"]

FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "function_call": "STOP",
          "content_filter": "SAFETY"}
_DONE = DONE.decode()


def _reasoning_tokens(usage: Any) -> int:
    details = usage.get("completion_tokens_details") if isinstance(usage, Mapping) else None
    n = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    return n if isinstance(n, int) and n > 0 else 0


def to_gemini_usage(usage: Usage, reasoning: int = 0) -> dict[str, Any]:
    reasoning = min(reasoning, usage.completion_tokens)
    out: dict[str, Any] = {"promptTokenCount": usage.prompt_tokens,
                           "candidatesTokenCount": usage.completion_tokens - reasoning,
                           "totalTokenCount": usage.total_tokens}
    if reasoning:
        out["thoughtsTokenCount"] = reasoning
    if usage.cached_tokens:
        out["cachedContentTokenCount"] = usage.cached_tokens
    return out


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _call_part(cid: Any, name: Any, args: Any) -> dict[str, Any]:
    fc: dict[str, Any] = {"name": name or "", "args": _arguments(args)}
    if isinstance(cid, str) and cid:
        fc["id"] = cid
    return {"functionCall": fc}


def from_chat_completion(obj: Mapping[str, Any], model: str, response_id: str) -> tuple[dict[str, Any], Usage | None]:
    """An OpenAI chat.completion -> (a GenerateContentResponse, usage)."""
    candidates = []
    for i, choice in enumerate(obj.get("choices") or ()):
        if not isinstance(choice, Mapping):
            continue
        msg = choice.get("message") or {}
        parts: list[dict[str, Any]] = []
        thought = msg.get("reasoning_content") or msg.get("reasoning")
        if isinstance(thought, str) and thought:
            parts.append({"text": thought, "thought": True})
        if isinstance(msg.get("content"), str) and msg["content"]:
            parts.append({"text": msg["content"]})
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") or {}
            parts.append(_call_part(call.get("id"), fn.get("name"), fn.get("arguments")))
        candidates.append({"content": {"parts": parts, "role": "model"},
                           "finishReason": FINISH.get(choice.get("finish_reason") or "stop", "STOP"),
                           "index": choice.get("index", i)})
    raw = obj.get("usage")
    usage = usage_from_openai(raw if isinstance(raw, Mapping) else None)
    out: dict[str, Any] = {"candidates": candidates}
    if usage is not None:
        out["usageMetadata"] = to_gemini_usage(usage, _reasoning_tokens(raw))
    out["modelVersion"] = model
    out["responseId"] = response_id
    return out, usage


def from_embeddings(obj: Mapping[str, Any], batch: bool) -> dict[str, Any]:
    """An OpenAI embeddings list -> embedContent's {"embedding"} or batchEmbedContents' {"embeddings"}."""
    data = sorted((d for d in obj.get("data") or () if isinstance(d, Mapping)), key=lambda d: d.get("index", 0))
    values = [{"values": d.get("embedding") or []} for d in data]
    if batch:
        return {"embeddings": values}
    return {"embedding": values[0] if values else {"values": []}}


class _Call:
    __slots__ = ("args", "id", "name")

    def __init__(self, cid: Any, name: Any) -> None:
        self.id, self.name = cid, name
        self.args: list[str] = []


class GeminiChatStream:
    """OpenAI chat SSE in (from the channel's chat handler), Gemini stream events out. One per request."""

    __slots__ = (
        "_array",
        "_calls",
        "_ended",
        "_finish",
        "_id",
        "_inner",
        "_model",
        "_parser",
        "_reasoning",
        "_sent",
        "done",
        "events",
        "headers",
        "usage",
    )

    def __init__(self, inner: StreamHandler, model: str, response_id: str, array: bool = False) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self.headers: Mapping[str, str] | None = JSON_STREAM_HEADERS if array else None
        self._inner = inner
        self._parser = SSEParser()
        self._model = model
        self._id = response_id
        self._array = array
        self._sent = False
        self._calls: dict[int, dict[int, _Call]] = {}  # choice -> tool_calls index -> call
        self._finish: dict[int, str] = {}  # choice -> Gemini finishReason
        self._reasoning = 0
        self._ended = False

    @property
    def completion(self) -> CompletionCounter:
        return self._inner.completion

    def feed(self, chunk: bytes) -> bytes:
        chat = self._inner.feed(chunk)
        self.events = self._inner.events
        return self._translate(chat) if chat else b""

    def close(self) -> bytes:
        """A chat stream that ended without [DONE] but with its finish_reason is complete all the same."""
        out = self._translate(self._inner.close())
        self._parser.close()
        if self._ended or not self._finish:
            return out
        return out + self._end()

    def error_frame(self, message: str, code: str) -> bytes:
        """Google's error object, ending the stream (the SDKs raise on it); nothing once it has ended."""
        if self._ended:
            return b""
        self._ended = True
        err = google_error_body(500, message)
        if not self._array:
            return b"data: " + err + b"\r\n\r\n"
        out = (b"\n," if self._sent else b"[") + err + b"\n]"
        self._sent = True
        return out

    def _frame(self, obj: Mapping[str, Any]) -> bytes:
        data = orjson.dumps(obj)
        if not self._array:
            return b"data: " + data + b"\r\n\r\n"
        out = (b"\n," if self._sent else b"[") + data
        self._sent = True
        return out

    def _part(self, index: int, part: dict[str, Any]) -> bytes:
        return self._frame({"candidates": [{"content": {"parts": [part], "role": "model"}, "index": index}],
                            "modelVersion": self._model, "responseId": self._id})

    def _translate(self, chat: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._parser.feed(chat):
            if self._ended or not ev.data:
                continue
            if ev.data == _DONE:  # the chat stream's clean end, finish_reason or not
                out.append(self._end())
                continue
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self._chunk(obj, out)
        return b"".join(out)

    def _chunk(self, obj: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(obj.get("error"), Mapping):
            out.append(self.error_frame(str(obj["error"].get("message") or "The upstream reported an error."), ""))
            return
        raw = obj.get("usage")
        if isinstance(raw, Mapping):
            self.usage = usage_from_openai(raw) or self.usage
            self._reasoning = _reasoning_tokens(raw) or self._reasoning
        for i, choice in enumerate(obj.get("choices") or ()):
            if not isinstance(choice, Mapping):
                continue
            index = choice.get("index", i)
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thought, str) and thought:
                out.append(self._part(index, {"text": thought, "thought": True}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._part(index, {"text": text}))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, Mapping):
                    continue
                fn = call.get("function") or {}
                calls = self._calls.setdefault(index, {})
                n = call.get("index", len(calls))
                if n not in calls:
                    calls[n] = _Call(call.get("id"), fn.get("name"))
                if fn.get("name") and not calls[n].name:
                    calls[n].name = fn["name"]
                if isinstance(fn.get("arguments"), str):
                    calls[n].args.append(fn["arguments"])
            if choice.get("finish_reason"):
                self._finish[index] = FINISH.get(choice["finish_reason"], "STOP")

    def _end(self) -> bytes:
        if self.usage is None:
            self.usage = self._inner.usage
        candidates = []
        for index in sorted(set(self._finish) | set(self._calls) or {0}):
            parts = [_call_part(c.id, c.name, "".join(c.args)) for _, c in sorted(self._calls.get(index, {}).items())]
            candidates.append({"content": {"parts": parts or [{"text": ""}], "role": "model"},
                               "finishReason": self._finish.get(index, "STOP"), "index": index})
        obj: dict[str, Any] = {"candidates": candidates}
        if self.usage is not None:
            obj["usageMetadata"] = to_gemini_usage(self.usage, self._reasoning)
        obj["modelVersion"], obj["responseId"] = self._model, self._id
        frame = self._frame(obj)
        self._ended = self.done = True
        return frame + (b"\n]" if self._array else b"")
