"""/v1/responses over chat/completions, the request side: a Responses body -> a chat/completions body.

The relay keeps no conversation state, so everything the upstream needs must be in the request itself:
`previous_response_id`, `conversation`, `store: true`, `background: true`, stored `prompt` templates and
`item_reference` items are refused with a 400 that says what to send instead. Reasoning items (Codex sends
them back with `encrypted_content`) mean nothing to a chat upstream and are dropped.

Input items map as follows: messages (user/assistant/system/developer; developer becomes system, which
every chat upstream accepts) with string content or input_text/output_text/refusal/input_image parts;
`function_call` items become `tool_calls` on an assistant message (consecutive calls, and calls that
directly follow that turn's assistant text, share one message); `function_call_output` items become
`tool` messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest

__all__ = ["to_chat_request"]

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
# Fields of a Responses request with no chat counterpart that changes the answer: dropped.
# (metadata, include, truncation, reasoning.summary, text.verbosity, service_tier, max_tool_calls, ...)

_NO_STATE = ("this model's upstream keeps no conversation state and neither does the relay: send the whole "
             "conversation in 'input' with 'store': false.")


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _image_url(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    if part.get("file_id"):
        raise _refuse(f"{where}: images by file_id are not supported on this model; send image_url "
                      "(a URL or a data: URL).", where)
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise _refuse(f"{where}: an input_image needs an image_url.", where)
    image: dict[str, Any] = {"url": url}
    if part.get("detail") in ("low", "high", "auto"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: a string when it is all text, else a list of parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _refuse(f"{where}: 'content' must be a string or an array of content parts.", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.{j}"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            parts.append(_image_url(part, at))
        else:
            raise _refuse(f"{at}: content parts of type {kind!r} are not supported on this model.", at)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool_output(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            if not (isinstance(part, Mapping) and part.get("type") in ("input_text", "output_text")):
                kind = part.get("type") if isinstance(part, Mapping) else None
                raise _refuse(f"{where}.{j}: tool output parts of type {kind!r} are not supported on this "
                              "model; send text.", f"{where}.{j}")
            texts.append(str(part.get("text") or ""))
        return "".join(texts)
    if output is None:
        return ""
    return orjson.dumps(output).decode()


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _refuse("'instructions' must be a string.", "instructions")
    if instructions:
        out.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        out.append({"role": "user", "content": items})
        return out
    if not isinstance(items, list):
        raise _refuse("'input' must be a string or an array of input items.", "input")
    calls_open = False  # the last message is an assistant turn that function_call items may join
    for i, item in enumerate(items):
        where = f"input.{i}"
        if not isinstance(item, Mapping):
            raise _refuse(f"{where}: an input item must be an object.", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = _ROLES.get(item.get("role") or "")
            if role is None:
                raise _refuse(f"{where}.role: must be user, assistant, system or developer.", f"{where}.role")
            out.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
            calls_open = role == "assistant"
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if not isinstance(call["id"], str) or not isinstance(item.get("name"), str):
                raise _refuse(f"{where}: a function_call needs a call_id and a name.", where)
            if calls_open:
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
                calls_open = True
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _refuse(f"{where}: a function_call_output needs a call_id.", f"{where}.call_id")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": _tool_output(item.get("output"), f"{where}.output")})
            calls_open = False
        elif kind == "reasoning":
            continue  # encrypted or summarized reasoning of an earlier turn: nothing a chat upstream reads
        elif kind == "item_reference":
            raise _refuse(f"{where}: item references need stored responses; {_NO_STATE}", where)
        else:
            raise _refuse(f"{where}: input items of type {kind!r} are not supported on this model.", where)
    if not out:
        raise _refuse("'input' is required.", "input")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _refuse("'tools' must be an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            raise _refuse(f"tools.{i}: tools of type {kind!r} are not supported on this model; only function "
                          "tools are.", f"tools.{i}.type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _refuse(f"tools.{i}: a function tool needs a name.", f"tools.{i}.name")
        fn: dict[str, Any] = {"name": tool["name"]}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    kind = choice.get("type") if isinstance(choice, Mapping) else choice
    raise _refuse(f"tool_choice: {kind!r} is not supported on this model; use auto, none, required or "
                  "{\"type\": \"function\", \"name\": ...}.", "tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), Mapping):
            raise _refuse("text.format: a json_schema format needs a schema.", "text.format.schema")
        schema: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        for name in ("description", "strict"):
            if fmt.get(name) is not None:
                schema[name] = fmt[name]
        return {"type": "json_schema", "json_schema": schema}
    raise _refuse(f"text.format: type {kind!r} is not supported; use text, json_object or json_schema.",
                  "text.format.type")


def _check_stateless(body: Mapping[str, Any]) -> None:
    if body.get("previous_response_id"):
        raise _refuse(f"previous_response_id is not supported on this model: {_NO_STATE}", "previous_response_id")
    if body.get("conversation"):
        raise _refuse(f"conversation is not supported on this model: {_NO_STATE}", "conversation")
    if body.get("store") is True:
        raise _refuse(f"store: true is not supported on this model: {_NO_STATE}", "store")
    if body.get("background") is True:
        raise _refuse("background: true is not supported on this model; stream the response instead.",
                      "background")
    if body.get("prompt"):
        raise _refuse("Stored prompt templates are not supported on this model; send the prompt in "
                      "'instructions' and 'input'.", "prompt")


def to_chat_request(body: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """A Responses request body -> a chat/completions body (raises InvalidRequest naming the field)."""
    _check_stateless(body)
    out: dict[str, Any] = {"model": model, "messages": _messages(body)}
    choice = None if body.get("tool_choice") is None else _tool_choice(body["tool_choice"])
    if body.get("tools"):  # chat upstreams refuse tool_choice and parallel_tool_calls without tools
        out["tools"] = _tools(body["tools"])
        if choice is not None:
            out["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool):
        out["max_tokens"] = limit  # max_completion_tokens is not understood by every upstream
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and isinstance(reasoning.get("effort"), str):
        out["reasoning_effort"] = reasoning["effort"]
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), (int, float)) and not isinstance(body.get(name), bool):
            out[name] = body[name]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["user"] = user
    if isinstance(body.get("prompt_cache_key"), str):
        out["prompt_cache_key"] = body["prompt_cache_key"]
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out
