"""Anthropic Messages answers -> OpenAI chat.completion answers, for channels of type `anthropic`. Pure.

Shared with the stream translator (anthropic_stream.py): stop reasons, error types and the usage objects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..types import Usage
from .thinking import from_anthropic_blocks

__all__ = ["ERROR_TYPES", "FINISH_REASONS", "from_anthropic_message", "from_anthropic_usage", "to_openai_usage"]

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
ERROR_TYPES = {
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


def from_anthropic_usage(obj: Any) -> Usage | None:
    """Anthropic counts cached input apart from input_tokens; OpenAI's prompt_tokens includes it."""
    if not isinstance(obj, Mapping):
        return None
    read = obj.get("cache_read_input_tokens") or 0
    created = obj.get("cache_creation_input_tokens") or 0
    prompt = (obj.get("input_tokens") or 0) + read + created
    return Usage(prompt, obj.get("output_tokens") or 0, "upstream", cached_tokens=read, cache_write_tokens=created)


def to_openai_usage(u: Usage) -> dict[str, Any]:
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
        out["usage"] = to_openai_usage(usage)
    return out, usage
