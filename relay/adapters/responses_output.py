"""/v1/responses over chat/completions, the answer side: a chat.completion -> a Responses `response` object.

Shared with the stream translator: the response shell (the request fields a Response echoes back, which the
openai SDK's `Response` model requires: tools, tool_choice, parallel_tool_calls, ...), the output items and
the usage object. Reasoning text a chat upstream returns in `reasoning_content` (DeepSeek, Qwen, vLLM) or
`reasoning` becomes a `reasoning` item whose summary holds that text: that is what Responses clients
(Codex, the SDK's helpers) display.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..types import Usage

__all__ = [
    "INCOMPLETE_REASONS",
    "finish",
    "from_chat_completion",
    "function_call_item",
    "item_id",
    "new_response_id",
    "reasoning_item",
    "response_shell",
    "responses_usage",
    "text_part",
    "usage_from_chat",
]

# chat finish_reason -> the Responses incomplete_details.reason (any other finish completes the response)
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}

_ECHO_DEFAULTS: dict[str, Any] = {
    "temperature": None, "top_p": None, "max_output_tokens": None, "prompt_cache_key": None,
    "safety_identifier": None, "user": None,
}


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def item_id(prefix: str, response_id: str, index: int) -> str:
    """An output item's id (msg_, fc_, rs_; call_ when the upstream gave a tool call none): the response's
    own random part and the item's output_index, so a stream and its final response agree."""
    return f"{prefix}_{response_id.removeprefix('resp_')}{index:04x}"


def _echo_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, Mapping) and tool.get("type") == "function":
            out.append({"type": "function", "name": tool.get("name"), "description": tool.get("description"),
                        "parameters": tool.get("parameters"), "strict": tool.get("strict")})
    return out


def _echo_text(text: Any) -> dict[str, Any]:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    out: dict[str, Any] = {"format": {"type": "text"}}
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        out["format"] = {"type": "json_object"}
    elif isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        out["format"] = {"type": "json_schema", "name": fmt.get("name") or "response", "schema": fmt.get("schema"),
                         "strict": fmt.get("strict"), "description": fmt.get("description")}
    if isinstance(text, Mapping) and text.get("verbosity") in ("low", "medium", "high"):
        out["verbosity"] = text["verbosity"]
    return out


def response_shell(body: Mapping[str, Any], response_id: str, model: str, created_at: int) -> dict[str, Any]:
    """A response object without output, status or usage: the request's settings echoed back."""
    out: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None,
        "metadata": dict(body["metadata"]) if isinstance(body.get("metadata"), Mapping) else {},
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "text": _echo_text(body.get("text")),
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": _echo_tools(body.get("tools")),
        "truncation": "disabled",
        "usage": None,
    }
    for name, default in _ECHO_DEFAULTS.items():
        value = body.get(name, default)
        out[name] = value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else default
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping):
        out["reasoning"] = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
    return out


def usage_from_chat(obj: Any) -> tuple[Usage | None, int]:
    """(Usage, reasoning tokens) from a chat usage object; prompt_tokens includes cached tokens, as
    Responses' input_tokens does."""
    if not isinstance(obj, Mapping):
        return None, 0
    prompt, completion = obj.get("prompt_tokens"), obj.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None, 0
    usage = Usage(prompt, completion, "upstream")
    details = obj.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if isinstance(cached, int) and 0 < cached <= prompt:
        usage.cached_tokens = cached
    written = obj.get("cache_creation_input_tokens")  # an Anthropic upstream's cache writes (LiteLLM's name)
    if isinstance(written, int) and 0 < written <= prompt - usage.cached_tokens:
        usage.cache_write_tokens = written
    details = obj.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    return usage, reasoning if isinstance(reasoning, int) and reasoning > 0 else 0


def responses_usage(usage: Usage | None, reasoning_tokens: int = 0) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def finish(response: dict[str, Any], finish_reason: str | None, created_at: int) -> None:
    """Set status (and incomplete_details) from the chat finish_reason."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    if not reason:
        response["completed_at"] = max(created_at, int(time.time()))


def reasoning_item(rid: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": rid, "summary": [{"type": "summary_text", "text": text}],
            "status": "completed"}


def function_call_item(fid: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": fid, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # a few upstreams answer with content parts
        return "".join(str(p.get("text") or "") for p in value if isinstance(p, Mapping))
    return ""


def from_chat_completion(
    chat: Mapping[str, Any], request_body: Mapping[str, Any], response_id: str
) -> tuple[dict[str, Any], Usage | None]:
    """An OpenAI chat.completion -> (a Responses response object, usage)."""
    created = chat.get("created")
    created_at = created if isinstance(created, int) else int(time.time())
    model = request_body.get("model") or chat.get("model") or ""
    response = response_shell(request_body, response_id, str(model), created_at)
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    msg: Mapping[str, Any] = message if isinstance(message, Mapping) else {}
    finish_reason = choice.get("finish_reason")
    status = "incomplete" if finish_reason in INCOMPLETE_REASONS else "completed"
    output: list[dict[str, Any]] = []
    thought = _text(msg.get("reasoning_content")) or _text(msg.get("reasoning"))
    if thought:
        output.append(reasoning_item(item_id("rs", response_id, len(output)), thought))
    parts: list[dict[str, Any]] = []
    text = _text(msg.get("content"))
    if text:
        parts.append(text_part(text))
    if isinstance(msg.get("refusal"), str) and msg["refusal"]:
        parts.append({"type": "refusal", "refusal": msg["refusal"]})
    if parts:
        output.append({"type": "message", "id": item_id("msg", response_id, len(output)), "status": status,
                       "role": "assistant", "content": parts})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        args = fn.get("arguments")
        args = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
        n = len(output)
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else item_id("call", response_id, n)
        output.append(function_call_item(item_id("fc", response_id, n), call_id, str(fn.get("name") or ""), args,
                                         "completed"))
    response["output"] = output
    usage, reasoning_tokens = usage_from_chat(chat.get("usage"))
    response["usage"] = responses_usage(usage, reasoning_tokens)
    finish(response, finish_reason if isinstance(finish_reason, str) else None, created_at)
    return response, usage
