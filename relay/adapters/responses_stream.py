"""/v1/responses over chat/completions, the stream side: chat.completion.chunk events -> Responses events.

One `ResponsesStream` per request. Every event is `event: <type>` + `data: <json>` with a `sequence_number`
counting from 0: response.created and response.in_progress on the first upstream event, then per output
item its output_item.added, content events and output_item.done, and finally response.completed (or
response.incomplete when the chat finish_reason was length or content_filter) carrying the whole response
with usage. There is no `[DONE]`.

- Reasoning text (`reasoning_content` / `reasoning` deltas) becomes a reasoning item with one summary part
  (reasoning_summary_part.added, reasoning_summary_text.delta/done, reasoning_summary_part.done).
- Text becomes a message item with an output_text part; refusal deltas a refusal part of the same item.
- Each tool call becomes a function_call item (function_call_arguments.delta/done). Tool-call items stay
  open until the chat stream finishes, so argument fragments may arrive in any order across calls;
  text and reasoning items close as soon as another item starts.

The texts of the answer are held until the end (the final event repeats them): bounded by the
response's own size, as any Responses server holds it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..sse import DONE, SSEParser, encode_event
from ..tokens import CompletionCounter
from ..types import Usage
from .base import StreamHandler
from .responses_output import (
    finish,
    function_call_item,
    item_id,
    new_response_id,
    reasoning_item,
    response_shell,
    responses_usage,
    text_part,
    usage_from_chat,
)

__all__ = ["ResponsesStream"]

_DONE = DONE.decode()


class _Call:
    __slots__ = ("args", "call_id", "id", "index", "name")

    def __init__(self, index: int, fid: str, call_id: str, name: str) -> None:
        self.index, self.id, self.call_id, self.name = index, fid, call_id, name
        self.args: list[str] = []


class ResponsesStream:
    """OpenAI chat SSE in (from `inner` when given, else fed directly), Responses SSE events out."""

    __slots__ = (
        "_body",
        "_calls",
        "_chunks",
        "_created",
        "_ended",
        "_finish",
        "_inner",
        "_model",
        "_open",
        "_output",
        "_parser",
        "_part",
        "_parts",
        "_reasoning_tokens",
        "_seq",
        "_started",
        "_text",
        "done",
        "events",
        "id",
        "response_id",
        "usage",
    )

    def __init__(
        self, request_body: Mapping[str, Any] | None, model: str, response_id: str | None = None,
        inner: StreamHandler | None = None,
    ) -> None:
        self.usage: Usage | None = None
        self.done = False  # True once response.completed / response.incomplete went out
        self.events = 0
        self.id = response_id or new_response_id()  # the response's id, made by the relay
        # The id of a response the upstream keeps, which the proxy binds to the account: none here (the
        # upstream keeps nothing, so calls on self.id find nothing, as they should).
        self.response_id: str | None = None
        self._inner = inner
        self._parser = SSEParser()
        self._text = CompletionCounter(model)
        self._body: Mapping[str, Any] = request_body or {}
        self._model = model
        self._created = int(time.time())
        self._seq = 0
        self._started = False
        self._ended = False  # a terminal event or an error event went out: nothing more follows
        self._output: list[dict[str, Any]] = []  # the response's items, in output_index order
        self._open: int | None = None  # the open message or reasoning item's output_index
        self._parts: list[dict[str, Any]] = []  # the open message's content parts
        self._part: str | None = None  # the open part's type: output_text | refusal | summary_text
        self._chunks: list[str] = []  # the open part's text so far
        self._calls: dict[int, _Call] = {}  # chat tool_calls index -> its open function_call item
        self._finish: str | None = None
        self._reasoning_tokens = 0

    @property
    def completion(self) -> CompletionCounter:
        """The text and arguments delivered (the inner handler already counts what it produced)."""
        return self._inner.completion if self._inner is not None else self._text

    def feed(self, chunk: bytes) -> bytes:
        inner = self._inner
        chat = inner.feed(chunk) if inner is not None else chunk
        out = self._translate(chat) if chat else b""
        if inner is not None:
            self.events = inner.events
            if self.usage is None:
                self.usage = inner.usage
        return out

    def close(self) -> bytes:
        """A chat stream that ended without [DONE] but with its finish_reason is complete all the same."""
        out = self._translate(self._inner.close()) if self._inner is not None else b""
        if self._inner is not None and self.usage is None:
            self.usage = self._inner.usage
        self._parser.close()
        if self._ended or self._finish is None:
            return out
        tail: list[bytes] = []
        self._end(tail)
        return out + b"".join(tail)

    def error_frame(self, message: str, code: str) -> bytes:
        """The event that ends a broken stream: a valid ResponseErrorEvent whose nested `error` makes the
        openai SDK raise APIError. Empty once the stream has ended (one terminal event per stream)."""
        if self._ended:
            return b""
        self._ended = True
        return self._event("error", {"code": code, "message": message, "param": None, "error": {
            "type": "server_error", "code": code, "message": message, "param": None}})

    # -- events ---------------------------------------------------------------------------------------

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        seq, self._seq = self._seq, self._seq + 1
        return encode_event(orjson.dumps({"type": kind, "sequence_number": seq, **data}), kind)

    def _translate(self, chat: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._parser.feed(chat):
            if self._inner is None:
                self.events += 1
            if not self._ended and ev.data:
                self._on(ev.data, out)
        return b"".join(out)

    def _on(self, data: str, out: list[bytes]) -> None:
        if data == _DONE:
            self._end(out)
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        err = obj.get("error")
        if isinstance(err, Mapping):
            message = err.get("message") or "The upstream reported an error."
            code = err.get("code") or err.get("type") or "upstream_error"
            out.append(self.error_frame(str(message), str(code)))
            return
        if not self._started:
            self._start(out)
        if isinstance(obj.get("usage"), Mapping):
            usage, reasoning = usage_from_chat(obj["usage"])
            if usage is not None:
                self.usage, self._reasoning_tokens = usage, reasoning
        for choice in obj.get("choices") or ():
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue  # a Responses answer has one output: n > 1 is never asked for
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                self._delta(delta, out)
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])

    def _delta(self, delta: Mapping[str, Any], out: list[bytes]) -> None:
        thought = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(thought, str) and thought:
            self._piece("summary_text", thought, out)
        for kind in ("content", "refusal"):
            text = delta.get(kind)
            if isinstance(text, str) and text:
                self._piece("output_text" if kind == "content" else "refusal", text, out)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, Mapping):
                    self._tool_delta(call, out)

    def _start(self, out: list[bytes]) -> None:
        self._started = True
        shell = response_shell(self._body, self.id, self._model, self._created)
        out.append(self._event("response.created", {"response": shell}))
        out.append(self._event("response.in_progress", {"response": shell}))

    def _add_item(self, item: dict[str, Any], out: list[bytes]) -> int:
        index = len(self._output)
        self._output.append(item)
        out.append(self._event("response.output_item.added", {"output_index": index, "item": item}))
        return index

    # -- message and reasoning items ------------------------------------------------------------------

    def _piece(self, part: str, text: str, out: list[bytes]) -> None:
        self._text.add(orjson.dumps(text)[1:-1])
        reasoning = part == "summary_text"
        if self._open is not None and (self._output[self._open]["type"] == "reasoning") != reasoning:
            self._close_item("completed", out)
        if self._open is None:
            rid = item_id("rs" if reasoning else "msg", self.id, len(self._output))
            item = ({"type": "reasoning", "id": rid, "summary": [], "status": "in_progress"} if reasoning else
                    {"type": "message", "id": rid, "status": "in_progress", "role": "assistant", "content": []})
            self._open = self._add_item(item, out)
        index = self._open
        rid = self._output[index]["id"]
        if self._part != part:
            self._close_part(out)
            self._part = part
            if reasoning:
                out.append(self._event("response.reasoning_summary_part.added", {
                    "item_id": rid, "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""}}))
            else:
                empty = text_part("") if part == "output_text" else {"type": "refusal", "refusal": ""}
                out.append(self._event("response.content_part.added", {
                    "item_id": rid, "output_index": index, "content_index": len(self._parts), "part": empty}))
        self._chunks.append(text)
        if reasoning:
            out.append(self._event("response.reasoning_summary_text.delta", {
                "item_id": rid, "output_index": index, "summary_index": 0, "delta": text}))
        elif part == "output_text":
            out.append(self._event("response.output_text.delta", {
                "item_id": rid, "output_index": index, "content_index": len(self._parts), "delta": text,
                "logprobs": []}))
        else:
            out.append(self._event("response.refusal.delta", {
                "item_id": rid, "output_index": index, "content_index": len(self._parts), "delta": text}))

    def _close_part(self, out: list[bytes]) -> None:
        if self._part is None or self._open is None:
            return
        index, text, part = self._open, "".join(self._chunks), self._part
        rid = self._output[index]["id"]
        self._part, self._chunks = None, []
        if part == "summary_text":
            out.append(self._event("response.reasoning_summary_text.done", {
                "item_id": rid, "output_index": index, "summary_index": 0, "text": text}))
            out.append(self._event("response.reasoning_summary_part.done", {
                "item_id": rid, "output_index": index, "summary_index": 0,
                "part": {"type": "summary_text", "text": text}}))
            self._output[index] = reasoning_item(rid, text)
            return
        n = len(self._parts)
        if part == "output_text":
            full = text_part(text)
            out.append(self._event("response.output_text.done", {
                "item_id": rid, "output_index": index, "content_index": n, "text": text, "logprobs": []}))
        else:
            full = {"type": "refusal", "refusal": text}
            out.append(self._event("response.refusal.done", {
                "item_id": rid, "output_index": index, "content_index": n, "refusal": text}))
        out.append(self._event("response.content_part.done", {
            "item_id": rid, "output_index": index, "content_index": n, "part": full}))
        self._parts.append(full)

    def _close_item(self, status: str, out: list[bytes]) -> None:
        if self._open is None:
            return
        self._close_part(out)
        index, self._open = self._open, None
        item = self._output[index]
        if item["type"] == "message":
            item = self._output[index] = {**item, "status": status, "content": self._parts}
            self._parts = []
        elif status != "completed":
            item = self._output[index] = {**item, "status": status}
        out.append(self._event("response.output_item.done", {"output_index": index, "item": item}))

    # -- function calls -------------------------------------------------------------------------------

    def _tool_delta(self, call: Mapping[str, Any], out: list[bytes]) -> None:
        n = call.get("index", 0)
        function = call.get("function")
        fn: Mapping[str, Any] = function if isinstance(function, Mapping) else {}
        state = self._calls.get(n)
        if state is None:
            self._close_item("completed", out)
            cid, n_out = call.get("id"), len(self._output)
            state = _Call(n_out, item_id("fc", self.id, n_out),
                          cid if isinstance(cid, str) and cid else item_id("call", self.id, n_out),
                          str(fn.get("name") or ""))
            self._calls[n] = state
            self._add_item(function_call_item(state.id, state.call_id, state.name, "", "in_progress"), out)
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            self._text.add(orjson.dumps(args)[1:-1])
            state.args.append(args)
            out.append(self._event("response.function_call_arguments.delta", {
                "item_id": state.id, "output_index": state.index, "delta": args}))

    def _close_calls(self, status: str, out: list[bytes]) -> None:
        for state in self._calls.values():
            args = "".join(state.args)
            out.append(self._event("response.function_call_arguments.done", {
                "item_id": state.id, "output_index": state.index, "arguments": args}))
            item = self._output[state.index] = function_call_item(state.id, state.call_id, state.name, args, status)
            out.append(self._event("response.output_item.done", {"output_index": state.index, "item": item}))
        self._calls = {}

    # -- the end --------------------------------------------------------------------------------------

    def _end(self, out: list[bytes]) -> None:
        if self._ended:
            return
        if not self._started:
            self._start(out)
        response = response_shell(self._body, self.id, self._model, self._created)
        finish(response, self._finish, self._created)
        status = "completed" if response["status"] == "completed" else "incomplete"
        self._close_item(status, out)
        self._close_calls(status, out)
        response["output"] = self._output
        response["usage"] = responses_usage(self.usage, self._reasoning_tokens)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": response}))
        self._ended = self.done = True
