"""The Responses API's wire format for the fake upstream: input items, validation, the
``response`` object and its stream events, as pure functions (no state, no I/O).

The shapes follow the openai SDK's types (openai/types/responses/) and OpenAI's API reference.
"""

from __future__ import annotations

import base64
import math
import os
import time
from typing import Any

import orjson

from bench.fake_upstream import _IDS, _RUN, _SENTENCE, ApiError, _missing, _sample, _split, _text_of, _tokens

__all__ = ["answer", "bad_type", "check", "events", "not_found", "parse_input", "sse_event",
           "uid"]

_FINAL = ("completed", "incomplete")
_THOUGHT = "The user wants a short answer; reply with the demo sentence."
_OBFUSCATION = "q0w9e8r7t6y5u4i3o2p1"  # pads small deltas, as the API's stream obfuscation does
_ROLES = ("user", "assistant", "system", "developer")
_KEPT_ITEMS = ("reasoning", "item_reference", "custom_tool_call", "custom_tool_call_output",
               "web_search_call", "file_search_call", "computer_call", "computer_call_output",
               "local_shell_call", "local_shell_call_output", "mcp_call", "compaction")
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "instructions": ((str, list), "a string"), "tools": ((list,), "an array"),
    "tool_choice": ((str, dict), "one of a string or object"), "text": ((dict,), "an object"),
    "reasoning": ((dict,), "an object"), "metadata": ((dict,), "an object"),
    "include": ((list,), "an array"), "max_output_tokens": ((int,), "an integer"),
    "temperature": ((int, float), "a number"), "top_p": ((int, float), "a number"),
    "previous_response_id": ((str,), "a string"), "stream": ((bool,), "a boolean"),
    "store": ((bool,), "a boolean"), "background": ((bool,), "a boolean"),
    "parallel_tool_calls": ((bool,), "a boolean"), "stream_options": ((dict,), "an object"),
}


def uid(prefix: str) -> str:
    return f"{prefix}_{_RUN}{next(_IDS):040x}"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a decimal", type(None): "null"}
    return names.get(type(value), "a value")


def bad_type(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"Invalid type for '{param}': expected {expected}, but got "
                    f"{_kind(value)} instead.", param=param, code="invalid_type")


def not_found(rid: str) -> ApiError:
    return ApiError(404, f"No response found with id '{rid}'.", code=None)


def sse_event(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def parse_input(inp: Any) -> list[dict[str, Any]]:
    """The request's input as the API stores it (each item with an id and a status)."""
    if isinstance(inp, str):
        inp = [{"role": "user", "content": inp}]
    elif not isinstance(inp, list):
        raise bad_type("input", "one of a string or array of input items", inp)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(inp):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_type(at, "an object", item)
        kind = item.get("type", "message")
        if kind == "message":
            role, content = item.get("role"), item.get("content")
            if role not in _ROLES:
                raise ApiError(400, f"Invalid value: '{role}'. Supported values are: 'user', "
                               "'assistant', 'system', and 'developer'.", param=f"{at}.role",
                               code="invalid_value")
            if content is None:
                raise _missing(f"{at}.content")
            if isinstance(content, str):
                part = "output_text" if role == "assistant" else "input_text"
                content = [{"type": part, "text": content,
                            **({"annotations": []} if role == "assistant" else {})}]
            elif not isinstance(content, list):
                raise bad_type(f"{at}.content", "one of a string or array of content parts",
                               content)
            out.append({"id": item.get("id") or uid("msg"), "type": "message", "role": role,
                        "content": content, "status": "completed"})
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _missing(f"{at}.{name}")
            out.append({"id": item.get("id") or uid("fc"), "type": kind, "status": "completed",
                        "arguments": item["arguments"], "call_id": item["call_id"],
                        "name": item["name"]})
        elif kind == "function_call_output":
            for name in ("call_id", "output"):
                if item.get(name) is None:
                    raise _missing(f"{at}.{name}")
            out.append({"id": item.get("id") or uid("fco"), "type": kind,
                        "call_id": item["call_id"], "output": item["output"],
                        "status": "completed"})
        elif kind in _KEPT_ITEMS:
            out.append({**item, "id": item.get("id") or uid("item")})
        else:
            raise ApiError(400, f"Invalid value: '{kind}'. Supported values are: 'message', "
                           "'function_call', 'function_call_output', 'reasoning' and "
                           "'item_reference'.", param=f"{at}.type", code="invalid_value")
    return out


def check(body: dict[str, Any]) -> None:
    """Type and value checks on the body's fields, with OpenAI's messages and params."""
    for name, (types, expected) in _TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise bad_type(name, expected, value)
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not tool.get("type"):
            raise _missing(f"tools[{i}].type")
        if tool["type"] == "function" and not tool.get("name"):
            raise _missing(f"tools[{i}].name")
    fmt = (body.get("text") or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise bad_type("text.format", "an object", fmt)
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        for name in ("name", "schema"):
            if not fmt.get(name):
                raise _missing(f"text.format.{name}")
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and limit < 16:
        raise ApiError(400, "Invalid 'max_output_tokens': integer below minimum value. Expected "
                       f"a value >= 16, but got {limit} instead.", param="max_output_tokens",
                       code="integer_below_min_value")
    if body.get("background") and body.get("store") is False:
        raise ApiError(400, "Background responses must be stored: 'background' needs 'store' "
                       "to be true.", param="background")


def _item_text(item: dict[str, Any]) -> str | None:
    kind = item["type"]
    if kind == "message":
        return _text_of(item["content"])
    if kind == "function_call":
        return str(item["arguments"])
    if kind == "function_call_output":
        out = item["output"]
        return out if isinstance(out, str) else _text_of(out)
    return None


def pick_tool(body: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function tool to call, unless the input ends with a tool's result and the choice is
    the model's (then it answers with text, so an agent loop ends, as chat's fake does)."""
    tools: list[dict[str, Any]] = [t for t in body.get("tools") or ()
                                   if t.get("type") == "function"]
    choice = body.get("tool_choice")
    answered = bool(items) and items[-1]["type"] == "function_call_output"
    if not tools or choice == "none" or (answered and choice in (None, "auto")):
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        return next((t for t in tools if t.get("name") == choice.get("name")), tools[0])
    return tools[0]


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool
    return {"type": "function", "description": tool.get("description"), "name": tool["name"],
            "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}


def _message_text(body: dict[str, Any], n: int) -> str:
    text = " ".join([_SENTENCE] * max(1, math.ceil(n / 6)))
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return orjson.dumps(_sample(fmt["schema"], fmt["schema"])).decode()
    if fmt.get("type") == "json_object":
        return orjson.dumps({"message": text}).decode()
    return text


def events(final: dict[str, Any], splits: list[int], obfuscate: bool,
           upto: str) -> list[dict[str, Any]]:
    """The response's stream as the API sends it; ``upto`` ends a background one early."""
    out: list[dict[str, Any]] = []
    pad = _OBFUSCATION if obfuscate else ""

    def emit(type_: str, **fields: Any) -> None:
        if pad and "delta" in fields:
            fields["obfuscation"] = pad[:max(1, 16 - len(fields["delta"]))]
        out.append({"type": type_, "sequence_number": len(out), **fields})
    start = {**final, "status": "queued" if final.get("background") else "in_progress",
             "completed_at": None, "output": [], "usage": None, "incomplete_details": None}
    emit("response.created", response=start)
    if final.get("background"):
        emit("response.queued", response=start)
        if upto == "queued":
            return out
    emit("response.in_progress", response={**start, "status": "in_progress"})
    if upto not in _FINAL:
        return out
    for index, (item, n) in enumerate(zip(final["output"], splits)):
        at = {"item_id": item["id"], "output_index": index}
        emit("response.output_item.added", output_index=index, item=_opened(item))
        if item["type"] == "message":
            part = item["content"][0]
            emit("response.content_part.added", **at, content_index=0, part={**part, "text": ""})
            for piece in _split(part["text"], n) if n else ():
                emit("response.output_text.delta", **at, content_index=0, delta=piece,
                     logprobs=[])
            emit("response.output_text.done", **at, content_index=0, text=part["text"],
                 logprobs=[])
            emit("response.content_part.done", **at, content_index=0, part=part)
        elif item["type"] == "function_call":
            for piece in _split(item["arguments"], n) if n else ():
                emit("response.function_call_arguments.delta", **at, delta=piece)
            emit("response.function_call_arguments.done", **at, arguments=item["arguments"])
        for s, summary in enumerate(item.get("summary") or ()):
            empty = {"type": "summary_text", "text": ""}
            emit("response.reasoning_summary_part.added", **at, summary_index=s, part=empty)
            for piece in _split(summary["text"], n):
                emit("response.reasoning_summary_text.delta", **at, summary_index=s,
                     delta=piece)
            emit("response.reasoning_summary_text.done", **at, summary_index=s,
                 text=summary["text"])
            emit("response.reasoning_summary_part.done", **at, summary_index=s, part=summary)
        emit("response.output_item.done", output_index=index, item=item)
    emit(f"response.{final['status']}", response=final)
    return out


def _opened(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as ``response.output_item.added`` shows it, before any delta."""
    if item["type"] == "message":
        return {**item, "status": "in_progress", "content": []}
    if item["type"] == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    return {k: v for k, v in item.items() if k != "encrypted_content"} | {"summary": []}


def answer(body: dict[str, Any], model: str, items: list[dict[str, Any]], n: int,
           cached: int) -> tuple[dict[str, Any], list[int]]:
    """The finished response object, and how many delta events each output item streams."""
    limit = body.get("max_output_tokens")
    budget = limit if isinstance(limit, int) else None
    output: list[dict[str, Any]] = []
    splits: list[int] = []
    reasoning_tokens = 0
    status = "completed"
    if isinstance(body.get("reasoning"), dict):
        summary = ([{"type": "summary_text", "text": _THOUGHT}]
                   if body["reasoning"].get("summary") else [])
        item: dict[str, Any] = {"id": uid("rs"), "type": "reasoning", "summary": summary}
        if "reasoning.encrypted_content" in (body.get("include") or ()):
            item["encrypted_content"] = "gAAAAAB" + base64.urlsafe_b64encode(
                os.urandom(96)).decode()
        output.append(item)
        splits.append(n)
        reasoning_tokens = n if budget is None else min(n, budget)
    left = None if budget is None else budget - reasoning_tokens
    tool = pick_tool(body, items)
    if left is not None and left <= 0:
        status = "incomplete"
    elif tool is not None:
        params = tool.get("parameters") or {}
        pieces = _split(orjson.dumps(_sample(params, params) or {}).decode(), n)
        if left is not None and left < len(pieces):
            pieces, status = pieces[:left], "incomplete"
        output.append({"id": uid("fc"), "type": "function_call", "status": status,
                       "arguments": "".join(pieces), "call_id": uid("call"),
                       "name": tool["name"]})
        splits.append(len(pieces))
    else:
        pieces = _split(_message_text(body, n), n)
        if left is not None and left < len(pieces):
            pieces, status = pieces[:left], "incomplete"
        output.append({"id": uid("msg"), "type": "message", "status": status,
                       "content": [{"type": "output_text", "annotations": [],
                                    "logprobs": [], "text": "".join(pieces)}],
                       "role": "assistant"})
        splits.append(len(pieces))
    own = sum(_tokens(t) for t in map(_item_text, items) if t is not None)
    if isinstance(body.get("instructions"), str):
        own += _tokens(body["instructions"])
    out_tokens = reasoning_tokens + sum(s for item, s in zip(output, splits)
                                        if item["type"] != "reasoning")
    usage = {"input_tokens": own + cached,
             "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
             "output_tokens": out_tokens,
             "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
             "total_tokens": own + cached + out_tokens}
    return _envelope(body, model, status, output, usage), splits


def _envelope(body: dict[str, Any], model: str, status: str, output: list[dict[str, Any]],
              usage: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    return {
        "id": uid("resp"), "object": "response", "created_at": now, "status": status,
        "background": bool(body.get("background")), "completed_at": now,
        "error": None,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete"
                               else None),
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"), "model": model, "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"), "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"},
                 "verbosity": text.get("verbosity", "medium")},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_echo_tool(t) for t in body.get("tools") or ()],
        "top_logprobs": body.get("top_logprobs", 0), "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"), "usage": usage,
        "user": body.get("user"), "metadata": body.get("metadata") or {},
    }
