"""OpenAI chat/completions bodies -> Anthropic Messages bodies, for channels of type `anthropic`. Pure.

The rules are in relay/adapters/anthropic.py's docstring: system messages become the top-level `system`,
turns are merged to alternate, tool calls and results become tool_use / tool_result blocks, images URL or
base64 sources, `response_format` a forced tool, `reasoning_effort` `thinking`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..types import ModelReasoning, RelayRequest
from .thinking import apply_anthropic_thinking, cache_control, thinking_blocks_of

__all__ = ["DEFAULT_MAX_TOKENS", "schema_tool_name", "to_anthropic_messages", "to_anthropic_request"]

DEFAULT_MAX_TOKENS = 4096

_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(?:;[^,;]*?)*;base64,(.*)", re.S)


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
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}: a {kind} part needs a string '{kind}'.", param="messages")
            if text:
                blocks.append({"type": "text", "text": text})
            else:
                continue
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
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
            text = _text_of(m.get("content"), where)
            if text:
                system.append(text)
                system_blocks += _system_blocks(m)
            continue
        if role == "user":
            blocks = _content_blocks(m.get("content"), where)
        elif role == "assistant":
            # thinking blocks sent back go first: the API wants them before the turn's tool_use
            blocks = thinking_blocks_of(m) + _content_blocks(m.get("content"), where)
            for call in m.get("tool_calls") or ():
                blocks.append(_tool_use_block(call, where))
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"{where}: a tool message needs 'tool_call_id'.", param="messages")
            text = _text_of(m.get("content"), where)
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
            if text:
                result["content"] = text
            content = m.get("content")
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


def schema_tool_name(req: RelayRequest) -> str | None:
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
