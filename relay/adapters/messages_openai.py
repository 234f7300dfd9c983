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
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest, UpstreamFailure, anthropic_error_body
from ..sse import DONE, SSEParser, encode_event
from ..tokens import CompletionCounter
from ..types import ModelReasoning, RelayRequest, Target, UpstreamRequest, Usage
from .base import Adapter
from .openai import usage_from_openai
from .thinking import openai_effort

__all__ = ["MessagesOverChat", "MessagesStream", "from_openai_completion", "to_openai_chat"]

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# -- request ---------------------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
                out.append(block["text"])
            elif not (isinstance(block, Mapping) and block.get("type") in ("thinking", "redacted_thinking")):
                raise InvalidRequest(f"{where}: only text blocks are supported here.", param="messages")
        return "\n".join(out)
    if content is None:
        return ""
    raise InvalidRequest(f"{where}: 'content' must be a string or an array of blocks.", param="messages")


def _image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, Mapping) and src.get("type") == "base64":
        return {"type": "image_url", "image_url": {"url": f"data:{src.get('media_type')};base64,{src.get('data')}"}}
    if isinstance(src, Mapping) and src.get("type") == "url" and isinstance(src.get("url"), str):
        return {"type": "image_url", "image_url": {"url": src["url"]}}
    raise InvalidRequest(f"{where}: an image needs a base64 or url source.", param="messages")


def _user_turn(content: Any, where: str) -> list[dict[str, Any]]:
    """One user turn: its tool results as tool messages, then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: 'content' must be a string or an array of blocks.", param="messages")
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            text = _text(block.get("content"), at)
            if block.get("is_error") and not text.startswith("Error"):
                text = "Error: " + text
            tools.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise InvalidRequest(f"{at}: blocks of type {kind!r} are not supported on this model.", param="messages")
    out = tools
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "".join(p["text"] for p in parts) if len(parts) == 1
                        else parts})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: 'content' must be a string or an array of blocks.", param="messages")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise InvalidRequest(f"{where}.content.{j}: blocks of type {kind!r} are not supported on this model.",
                                 param="messages")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls) for an Anthropic tool_choice."""
    if not isinstance(choice, Mapping):
        return None, None
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise InvalidRequest("tool_choice: type must be auto, any, tool or none.", param="tool_choice")


def to_openai_chat(
    body: Mapping[str, Any], model: str, stream: bool, reasoning: ModelReasoning | None = None
) -> dict[str, Any]:
    """An Anthropic Messages request body -> an OpenAI chat/completions body."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system, "system")})
    for i, m in enumerate(body.get("messages") or ()):
        where = f"messages.{i}"
        role = m.get("role")
        if role == "user":
            messages.extend(_user_turn(m.get("content"), where))
        elif role == "assistant":
            messages.append(_assistant_turn(m.get("content"), where))
        else:
            raise InvalidRequest(f"{where}.role: must be user or assistant.", param="messages")
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": body.get("max_tokens")}
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), (int, float)):
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops:
        out["stop"] = [s for s in stops if isinstance(s, str)]
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    effort = openai_effort(body.get("thinking"), body.get("output_config"), reasoning or ModelReasoning())
    if effort is not None:
        out["reasoning_effort"] = effort
    tools = []
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"tools.{i}: a tool needs a name.", param="tools")
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(f"tools.{i}: tools of type {tool['type']!r} are not supported on this model.",
                                 param="tools")
        fn: dict[str, Any] = {"name": tool["name"],
                              "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        tools.append({"type": "function", "function": fn})
    if tools:
        out["tools"] = tools
        choice, parallel = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# -- response --------------------------------------------------------------------------------------------


def to_anthropic_usage(u: Usage | None) -> dict[str, int]:
    """Anthropic counts cached input apart from input_tokens; OpenAI's prompt_tokens includes it."""
    if u is None:
        return {"input_tokens": 0, "output_tokens": 0}
    out = {"input_tokens": u.prompt_tokens - u.cached_tokens - u.cache_write_tokens, "output_tokens": u.completion_tokens}
    if u.cache_write_tokens:
        out["cache_creation_input_tokens"] = u.cache_write_tokens
    if u.cached_tokens:
        out["cache_read_input_tokens"] = u.cached_tokens
    return out


def _reasoning_of(obj: Mapping[str, Any]) -> Any:
    """A chat message's or delta's reasoning text: `reasoning_content` (DeepSeek, Qwen) or `reasoning`."""
    value = obj.get("reasoning_content")
    return value if value is not None else obj.get("reasoning")


def _usage(obj: Any) -> Usage | None:
    usage = usage_from_openai(obj if isinstance(obj, Mapping) else None)
    if usage is not None and isinstance(obj, Mapping):
        details = obj.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        if isinstance(cached, int) and 0 < cached <= usage.prompt_tokens:
            usage.cached_tokens = cached
        written = obj.get("cache_creation_input_tokens")  # an OpenAI-compatible proxy in front of Claude
        if isinstance(written, int) and 0 < written <= usage.prompt_tokens - usage.cached_tokens:
            usage.cache_write_tokens = written
    return usage


def _arguments(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def from_openai_completion(obj: Mapping[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """An OpenAI chat.completion -> an Anthropic message."""
    choices = obj.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = _reasoning_of(msg)
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = msg.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _tool_id(), "name": fn.get("name"),
                        "input": _arguments(fn.get("arguments"))})
    usage = _usage(obj.get("usage"))
    out = {
        "id": _message_id(obj.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": to_anthropic_usage(usage),
    }
    return out, usage


def _message_id(upstream_id: Any) -> str:
    return f"msg_{upstream_id}" if isinstance(upstream_id, str) and upstream_id else "msg_" + secrets.token_hex(12)


def _tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": name, **data}), name)


class MessagesStream:
    """OpenAI chat.completion.chunk events in, Anthropic Messages stream events out. One per request."""

    __slots__ = (
        "usage", "done", "events", "_parser", "_text", "_model", "_id", "_started", "_block", "_blocks",
        "_tools", "_finish", "_thinking",
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
            self._id = _message_id(upstream_id)
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
            self.usage = _usage(obj["usage"]) or self.usage
        for choice in obj.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta") or {}
            thought = _reasoning_of(delta)
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
                "type": "tool_use", "id": call.get("id") or _tool_id(), "name": fn.get("name") or "", "input": {},
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
            return body, _usage(obj.get("usage")) if isinstance(obj, dict) else None
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
