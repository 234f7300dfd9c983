"""/v1/messages over chat/completions, the request side: an Anthropic Messages body -> a chat/completions body.

The rules are in relay/adapters/messages_openai.py's docstring: `system` becomes a leading system message,
tool_use and tool_result blocks tool calls and tool messages, thinking blocks are dropped, `thinking`
becomes `reasoning_effort` where the model takes it. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..types import ModelReasoning
from .thinking import openai_effort

__all__ = ["to_openai_chat"]


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
