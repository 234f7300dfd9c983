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
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest, UpstreamFailure
from ..sse import SSEParser, encode_event
from ..tokens import CompletionCounter
from ..types import ModelReasoning, RelayRequest, Target, UpstreamRequest, Usage
from .base import classify_status
from .thinking import apply_anthropic_thinking, cache_control, from_anthropic_blocks, thinking_blocks_of

__all__ = ["AnthropicAdapter", "AnthropicStream", "from_anthropic_usage", "to_anthropic_messages"]

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> OpenAI error type (the Anthropic type is kept as `code`).
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "billing_error": "insufficient_quota",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}

_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(?:;[^,;]*?)*;base64,(.*)", re.S)


# -- request ---------------------------------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    """A system/tool message's content (a string or text parts) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                raise InvalidRequest(f"{where}: only text parts are supported here.", param="messages")
        return "\n".join(out)
    raise InvalidRequest(f"{where}: 'content' must be a string or an array of parts.", param="messages")


def _image_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str):
        raise InvalidRequest(f"{where}: 'image_url.url' must be a string.", param="messages")
    if url.startswith("data:"):
        m = _DATA_URI.fullmatch(url)
        if m is None or not m.group(1):
            raise InvalidRequest(f"{where}: an image data URI must be base64 with a media type.", param="messages")
        return {"type": "image", "source": {"type": "base64", "media_type": m.group(1), "data": m.group(2)}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{where}: an image must be an http(s) URL or a data URI.", param="messages")


def _content_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """User or assistant content as Anthropic blocks (empty text left out: the API refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: 'content' must be a string or an array of parts.", param="messages")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" or kind == "refusal":
            text = part.get(kind)  # type: ignore[union-attr]
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}: a {kind} part needs a string '{kind}'.", param="messages")
            if text:
                blocks.append({"type": "text", "text": text})
            else:
                continue
        elif kind == "image_url":
            blocks.append(_image_block(part, where))  # type: ignore[arg-type]
        else:
            raise InvalidRequest(f"{where}: content parts of type {kind!r} are not supported.", param="messages")
        if (cc := cache_control(part)) is not None:
            blocks[-1]["cache_control"] = cc
    return blocks


def _tool_use_block(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
        raise InvalidRequest(f"{where}: each tool call needs an 'id' and a 'function.name'.", param="messages")
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"{where}: tool call arguments are not valid JSON.", param="messages") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{where}: tool call arguments must be a JSON object.", param="messages")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": parsed}


def to_anthropic_messages(messages: Any) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """OpenAI chat messages -> (system, alternating Anthropic turns)."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array.", param="messages")
    system: list[str] = []
    system_blocks: list[dict[str, Any]] = []  # the same, part by part with their cache_control
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, Mapping) else None
        if role in ("system", "developer"):
            text = _text_of(m.get("content"), where)  # type: ignore[union-attr]
            if text:
                system.append(text)
                system_blocks += _system_blocks(m)  # type: ignore[arg-type]
            continue
        if role == "user":
            blocks = _content_blocks(m.get("content"), where)  # type: ignore[union-attr]
        elif role == "assistant":
            # thinking blocks sent back go first: the API wants them before the turn's tool_use
            blocks = thinking_blocks_of(m) + _content_blocks(m.get("content"), where)  # type: ignore[arg-type, union-attr]
            for call in m.get("tool_calls") or ():  # type: ignore[union-attr]
                blocks.append(_tool_use_block(call, where))
        elif role == "tool":
            call_id = m.get("tool_call_id")  # type: ignore[union-attr]
            if not isinstance(call_id, str):
                raise InvalidRequest(f"{where}: a tool message needs 'tool_call_id'.", param="messages")
            text = _text_of(m.get("content"), where)  # type: ignore[union-attr]
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
            if text:
                result["content"] = text
            content = m.get("content")  # type: ignore[union-attr]
            marks = [cache_control(p) for p in content if cache_control(p)] if isinstance(content, list) else []
            if marks:
                result["cache_control"] = marks[-1]
            blocks, role = [result], "user"
        else:
            raise InvalidRequest(f"{where}: role {role!r} is not supported on this model.", param="messages")
        if not blocks:
            continue
        if (cc := cache_control(m)) is not None:  # a message's own cache_control marks its last block
            blocks[-1]["cache_control"] = cc
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not system:
        return None, turns
    if any("cache_control" in b for b in system_blocks):
        return system_blocks, turns
    if len(system) == 1:
        return system[0], turns
    return [{"type": "text", "text": s} for s in system], turns


def _system_blocks(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A system message as text blocks, keeping each part's cache_control (and the message's, on the last)."""
    content = m.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
    out = []
    for part in parts:
        if isinstance(part, Mapping) and part.get("text"):
            block = {"type": "text", "text": part["text"]}
            if (cc := cache_control(part)) is not None:
                block["cache_control"] = cc
            out.append(block)
    if out and (cc := cache_control(m)) is not None:
        out[-1]["cache_control"] = cc
    return out


def _schema_tool(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The forced tool that stands in for response_format (None when there is none)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise InvalidRequest("'response_format.json_schema.name' is required.", param="response_format")
        schema = spec.get("schema")
        return {
            "name": spec["name"],
            "description": spec.get("description") or "Give the answer as this tool's input.",
            "input_schema": schema if isinstance(schema, Mapping) else {"type": "object"},
        }
    if kind == "json_object":
        return {"name": "json_object", "description": "Give the answer as a JSON object: this tool's input.",
                "input_schema": {"type": "object"}}
    return None


def _schema_tool_name(req: RelayRequest) -> str | None:
    body = req.json or {}
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping) or fmt.get("type") not in ("json_schema", "json_object"):
        return None
    tool = _schema_tool(body)
    return tool["name"] if tool else None


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(body.get("tools") or ()):
        fn = tool.get("function") if isinstance(tool, Mapping) and tool.get("type") == "function" else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"tools[{i}]: only function tools with a name are supported.", param="tools")
        params = fn.get("parameters")
        entry: dict[str, Any] = {
            "name": fn["name"],
            "input_schema": params if isinstance(params, Mapping) else {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            entry["description"] = fn["description"]
        if (cc := cache_control(tool) or cache_control(fn)) is not None:
            entry["cache_control"] = cc
        out.append(entry)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest("'tool_choice' is not one of auto, none, required or a function.", param="tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # the API's default already
    return out


def to_anthropic_request(
    body: Mapping[str, Any], model: str, stream: bool, reasoning: ModelReasoning | None = None
) -> dict[str, Any]:
    system, turns = to_anthropic_messages(body.get("messages"))
    out: dict[str, Any] = {"model": model}
    if system is not None:
        out["system"] = system
    out["messages"] = turns
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise InvalidRequest("'n' greater than 1 is not supported on this model.", param="n")
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)):
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)  # OpenAI's range is 0..2
    if isinstance(body.get("top_p"), (int, float)):
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = _tools(body)
    schema_tool = _schema_tool(body)
    if schema_tool is not None:
        if tools:
            raise InvalidRequest(
                "'response_format' together with 'tools' is not supported on this model.", param="response_format"
            )
        out["tools"] = [schema_tool]
        out["tool_choice"] = {"type": "tool", "name": schema_tool["name"]}
    elif tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    apply_anthropic_thinking(out, body, reasoning or ModelReasoning())
    if stream:
        out["stream"] = True
    return out


# -- response --------------------------------------------------------------------------------------------


def from_anthropic_usage(obj: Any) -> Usage | None:
    """Anthropic counts cached input apart from input_tokens; OpenAI's prompt_tokens includes it."""
    if not isinstance(obj, Mapping):
        return None
    read = obj.get("cache_read_input_tokens") or 0
    created = obj.get("cache_creation_input_tokens") or 0
    prompt = (obj.get("input_tokens") or 0) + read + created
    return Usage(prompt, obj.get("output_tokens") or 0, "upstream", cached_tokens=read, cache_write_tokens=created)


def _openai_usage(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }
    if u.cache_write_tokens:  # (part of prompt_tokens) LiteLLM's name for what was written to the cache
        out["cache_creation_input_tokens"] = u.cache_write_tokens
    return out


def from_anthropic_message(
    msg: Mapping[str, Any], model: str, schema_tool: str | None
) -> tuple[dict[str, Any], Usage | None]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    answered_by_schema = False
    for block in msg.get("content") or ():
        kind = block.get("type")
        if kind == "text" and not answered_by_schema:
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            if schema_tool is not None and block.get("name") == schema_tool and not answered_by_schema:
                texts = [args]  # the answer is the schema tool's input alone
                answered_by_schema = True
            else:
                calls.append({"id": block.get("id"), "type": "function",
                              "function": {"name": block.get("name"), "arguments": args}})
    stop = msg.get("stop_reason")
    finish = "stop" if answered_by_schema and stop == "tool_use" else FINISH_REASONS.get(stop or "", "stop")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    reasoning, thinking_blocks = from_anthropic_blocks(msg.get("content"))
    if thinking_blocks:
        message["reasoning_content"] = reasoning
        message["thinking_blocks"] = thinking_blocks
    if calls:
        message["tool_calls"] = calls
    usage = from_anthropic_usage(msg.get("usage"))
    out: dict[str, Any] = {
        "id": msg.get("id") or "chatcmpl-anthropic",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = _openai_usage(usage)
    return out, usage


class AnthropicStream:
    """Messages API stream events in, OpenAI chat.completion.chunk events out. One per request."""

    __slots__ = (
        "usage", "done", "events", "_parser", "_text", "_model", "_created", "_id", "_wants_usage",
        "_schema_tool", "_schema_blocks", "_tool_index", "_finish", "_usage_raw",
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
                              "type": _ERROR_TYPES.get(etype, "server_error"), "param": None, "code": etype}}
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
                    "model": self._model, "choices": [], "usage": _openai_usage(self.usage),
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


# -- the adapter -----------------------------------------------------------------------------------------


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
        out, usage = from_anthropic_message(msg, req.model, _schema_tool_name(req))
        return orjson.dumps(out), usage

    def stream_handler(self, req: RelayRequest) -> AnthropicStream:
        return AnthropicStream(req.model, req.wants_usage, _schema_tool_name(req))

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
        otype = _ERROR_TYPES.get(etype, "server_error" if status >= 500 else "invalid_request_error")
        shaped = orjson.dumps({"error": {"message": message, "type": otype, "param": None, "code": etype}})
        failure = classify_status(status, headers, shaped, "application/json")
        if etype == "billing_error" or (status == 429 and b"spend_limit" in body):
            failure.reason = "upstream account out of credit"
        return failure
