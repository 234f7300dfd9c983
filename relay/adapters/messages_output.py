"""/v1/messages over chat/completions, the answer side: a chat.completion -> an Anthropic `message`. Pure.

Shared with the stream translator (messages_stream.py): stop reasons, usage in both directions, reasoning
text, message and tool-use ids.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from ..types import Usage
from .openai import usage_from_openai

__all__ = [
    "STOP_REASONS", "anthropic_message_id", "chat_usage", "from_openai_completion", "new_tool_id", "reasoning_of",
    "to_anthropic_usage",
]

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


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


def reasoning_of(obj: Mapping[str, Any]) -> Any:
    """A chat message's or delta's reasoning text: `reasoning_content` (DeepSeek, Qwen) or `reasoning`."""
    value = obj.get("reasoning_content")
    return value if value is not None else obj.get("reasoning")


def chat_usage(obj: Any) -> Usage | None:
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
    reasoning = reasoning_of(msg)
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = msg.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_tool_id(), "name": fn.get("name"),
                        "input": _arguments(fn.get("arguments"))})
    usage = chat_usage(obj.get("usage"))
    out = {
        "id": anthropic_message_id(obj.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": to_anthropic_usage(usage),
    }
    return out, usage


def anthropic_message_id(upstream_id: Any) -> str:
    return f"msg_{upstream_id}" if isinstance(upstream_id, str) and upstream_id else "msg_" + secrets.token_hex(12)


def new_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)
