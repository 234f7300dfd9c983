"""Gemini GenerateContentResponse answers -> OpenAI chat.completion answers, for channels of type `gemini`. Pure.

Shared with the stream translator (gemini_stream.py): finish reasons, tool call ids, thought signatures on
tool calls and the usage objects.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..types import Usage

__all__ = [
    "FINISH_REASONS", "finish_reason", "from_gemini_response", "from_gemini_usage", "to_openai_usage", "tool_call_id",
    "with_signature",
]

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "LANGUAGE": "stop",
    "OTHER": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
}


def with_signature(call: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    sig = part.get("thoughtSignature")
    if isinstance(sig, str) and sig:
        call["extra_content"] = {"google": {"thought_signature": sig}}
    return call


def tool_call_id(candidate: int, ordinal: int, name: str) -> str:
    """A stable id: the same response (streamed or not) always maps to the same ids."""
    digest = hashlib.sha256(f"{candidate}:{ordinal}:{name}".encode()).hexdigest()
    return "call_" + digest[:24]


def from_gemini_usage(meta: Any) -> Usage | None:
    if not isinstance(meta, Mapping):
        return None
    prompt = meta.get("promptTokenCount", 0) + meta.get("toolUsePromptTokenCount", 0)
    completion = meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0)
    return Usage(prompt, completion, "upstream", cached_tokens=meta.get("cachedContentTokenCount", 0))


def to_openai_usage(usage: Usage, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": meta.get("thoughtsTokenCount", 0)},
    }


def finish_reason(reason: Any, has_calls: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_calls and mapped == "stop" else mapped


def from_gemini_response(obj: Mapping[str, Any], model: str, request_id: str) -> tuple[dict[str, Any], Usage | None]:
    """A GenerateContentResponse -> (an OpenAI chat.completion, usage)."""
    choices = []
    for i, cand in enumerate(obj.get("candidates") or ()):
        index = cand.get("index", i)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or ():
            if part.get("thought"):
                if isinstance(part.get("text"), str):
                    thoughts.append(part["text"])
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            fc = part.get("functionCall")
            if isinstance(fc, Mapping):
                name = fc.get("name", "")
                calls.append(with_signature({
                    "id": tool_call_id(index, len(calls), name), "type": "function",
                    "function": {"name": name, "arguments": orjson.dumps(fc.get("args") or {}).decode()},
                }, part))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        choices.append({
            "index": index, "message": message, "logprobs": None,
            "finish_reason": finish_reason(cand.get("finishReason"), bool(calls)),
        })
    if not choices and (obj.get("promptFeedback") or {}).get("blockReason"):
        choices.append({
            "index": 0, "message": {"role": "assistant", "content": None, "refusal": None},
            "logprobs": None, "finish_reason": "content_filter",
        })
    meta = obj.get("usageMetadata") or {}
    usage = from_gemini_usage(meta) if meta else None
    out: dict[str, Any] = {
        "id": "chatcmpl-" + str(obj.get("responseId") or request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = to_openai_usage(usage, meta)
    return out, usage
