"""A fake Anthropic Messages API: POST /v1/messages, whole or streamed, in the real wire format.

It checks what the real API checks first (x-api-key, an anthropic-version date, model, max_tokens, turns that
alternate and start with a user turn), records every request it accepted or refused, and answers:

- with a `tool_use` block when tools are given and tool_choice is not none and the last user turn holds no
  tool_result (the forced tool when tool_choice names one), its input made up from the tool's schema;
- otherwise with text: `TEXT`, or "The tool said: <result>" after a tool_result.

With `thinking` enabled (`{"type": "enabled", "budget_tokens": N}` or `{"type": "adaptive"}`) it checks what the
real API checks (budget_tokens at least 1024 and below max_tokens, no temperature other than 1, no top_k, no
top_p below 0.95, no forced tool_choice; the last assistant turn, when it holds tool_use, must start with a
thinking or redacted_thinking block whose signature is one this fake gave) and answers with a thinking block
(`THINKING`, signed) first, and a redacted_thinking block after it when `FakeOptions.redacted` is set.

Streams send the real event sequence: message_start, content_block_start, ping, content_block_delta...
(thinking_delta then one signature_delta for thinking blocks), content_block_stop, message_delta
(stop_reason, usage), message_stop.

POST /v1/messages/count_tokens answers `{"input_tokens": N}` with N = `count_tokens(body)` (a made-up count:
one per four bytes of the messages, system and tools JSON). `app[SCRIPT]` holds answers to give
instead, first in first out: `(status, body dict)` for an error answer, or `("stream_error", error dict)` for a
stream that breaks off with an `event: error` after its first text delta.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "OPTIONS", "RECORDS", "REDACTED", "SCRIPT", "TEXT", "THINKING", "FakeOptions", "Received", "build_app",
    "count_tokens", "error_body", "signature",
]

TEXT = "Hello from Claude. The sky is clear over Paris today."
THINKING = "The user asks about the weather. I should look it up before answering."
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj"
# Text is streamed in pieces of this many characters.
PIECE = 7


@dataclass
class Received:
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class FakeOptions:
    input_tokens: int = 25
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    redacted: bool = False  # thinking answers also carry a redacted_thinking block


RECORDS = web.AppKey("records", list)
SCRIPT = web.AppKey("script", list)
OPTIONS = web.AppKey("options", FakeOptions)


def error_body(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_fake"}


def _validate(request: web.Request, body: Any) -> tuple[int, dict[str, Any]] | None:
    if not request.headers.get("x-api-key"):
        return 401, error_body("authentication_error", "x-api-key header is required")
    if not re.fullmatch(r"20\d\d-\d\d-\d\d", request.headers.get("anthropic-version", "")):
        return 400, error_body("invalid_request_error", "anthropic-version: header is required")
    if not isinstance(body, dict):
        return 400, error_body("invalid_request_error", "body must be a JSON object")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return 400, error_body("invalid_request_error", f"{name}: Field required")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return 400, error_body("invalid_request_error", "messages: at least one message is required")
    expected = "user"
    for i, m in enumerate(messages):
        if m.get("role") != expected:
            return 400, error_body("invalid_request_error", f"messages.{i}.role: roles must alternate, starting with user")
        expected = "assistant" if expected == "user" else "user"
        content = m.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if block.get("type") == "text" and not block.get("text"):
                    return 400, error_body("invalid_request_error", f"messages.{i}.content.{j}.text: must be non-empty")
    if body.get("tool_choice") and not body.get("tools"):
        return 400, error_body("invalid_request_error", "tool_choice may only be specified while providing tools")
    if _thinking(body):
        return _validate_thinking(body)
    return None


def signature(thinking: str) -> str:
    """The signature this fake gives a thinking block (the real one is opaque too)."""
    return base64.b64encode(hashlib.sha256(b"fake-signature:" + thinking.encode()).digest()).decode()


def _thinking(body: dict[str, Any]) -> bool:
    t = body.get("thinking")
    return isinstance(t, dict) and t.get("type") in ("enabled", "adaptive")


def _validate_thinking(body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    t = body["thinking"]
    if t["type"] == "enabled":
        budget = t.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return 400, error_body("invalid_request_error", "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if body["max_tokens"] <= budget:
            return 400, error_body("invalid_request_error", "`max_tokens` must be greater than `thinking.budget_tokens`.")
    if body.get("temperature") not in (None, 1, 1.0):
        return 400, error_body("invalid_request_error", "`temperature` may only be set to 1 when thinking is enabled or in adaptive mode.")
    if body.get("top_k") is not None or (body.get("top_p") is not None and body["top_p"] < 0.95):
        return 400, error_body("invalid_request_error", "`top_k` and a `top_p` below 0.95 are not allowed when thinking is enabled.")
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return 400, error_body("invalid_request_error", "Thinking may not be enabled when tool_choice forces tool use.")
    messages = body["messages"]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return None
    content = messages[last].get("content")
    if not isinstance(content, list) or not any(b.get("type") == "tool_use" for b in content):
        return None
    first = content[0].get("type")
    if first not in ("thinking", "redacted_thinking"):
        return 400, error_body("invalid_request_error", (
            f"messages.{last}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When "
            "`thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the "
            "lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from "
            "previous turns."))
    for j, block in enumerate(content):
        if block.get("type") == "thinking" and block.get("signature") != signature(block.get("thinking", "")):
            return 400, error_body("invalid_request_error", f"messages.{last}.content.{j}: Invalid `signature` in `thinking` block")
        if block.get("type") == "redacted_thinking" and block.get("data") != REDACTED:
            return 400, error_body("invalid_request_error", f"messages.{last}.content.{j}: Invalid `data` in `redacted_thinking` block")
    return None


def count_tokens(body: dict[str, Any]) -> int:
    return len(orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")])) // 4


def _sample(schema: Any) -> Any:
    """A value that fits a JSON schema (the subset tests use)."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _sample(v) for k, v in props.items()}
    if kind == "string":
        return "Paris"
    if kind == "integer":
        return 42
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_sample(schema.get("items"))]
    return None


def _answer(body: dict[str, Any], opts: FakeOptions) -> tuple[list[dict[str, Any]], str]:
    """The content blocks of the answer and its stop_reason."""
    blocks, stop = _visible(body)
    if _thinking(body):
        thought: list[dict[str, Any]] = [{"type": "thinking", "thinking": THINKING, "signature": signature(THINKING)}]
        if opts.redacted:
            thought.append({"type": "redacted_thinking", "data": REDACTED})
        blocks = thought + blocks
    return blocks, stop


def _visible(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    last = body["messages"][-1]
    content = last.get("content")
    results = [b for b in content if b.get("type") == "tool_result"] if isinstance(content, list) else []
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if tools and choice.get("type") != "none" and not results:
        tool = tools[0]
        if choice.get("type") == "tool":
            tool = next(t for t in tools if t["name"] == choice["name"])
        block = {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": tool["name"],
                 "input": _sample(tool.get("input_schema"))}
        if choice.get("type") in ("any", "tool"):
            return [block], "tool_use"  # a forced tool use comes without text before it
        return [{"type": "text", "text": "Let me check."}, block], "tool_use"
    if results:
        said = results[0].get("content")
        if isinstance(said, list):
            said = "".join(b.get("text", "") for b in said)
        return [{"type": "text", "text": f"The tool said: {said}"}], "end_turn"
    return [{"type": "text", "text": TEXT}], "end_turn"


def _usage(opts: FakeOptions, output: int) -> dict[str, Any]:
    return {
        "input_tokens": opts.input_tokens,
        "cache_creation_input_tokens": opts.cache_creation_input_tokens,
        "cache_read_input_tokens": opts.cache_read_input_tokens,
        "output_tokens": output,
    }


def _output_tokens(blocks: list[dict[str, Any]]) -> int:
    return sum(len(orjson.dumps(b.get("text") or b.get("thinking") or b.get("input"))) // 4 + 1 for b in blocks)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(request: web.Request, body: dict[str, Any], blocks: list[dict[str, Any]], stop: str,
                  error: dict[str, Any] | None) -> web.StreamResponse:
    opts = request.app[OPTIONS]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    msg = {"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant", "content": [],
           "model": body["model"], "stop_reason": None, "stop_sequence": None, "usage": _usage(opts, 1)}
    await resp.write(_event("message_start", {"type": "message_start", "message": msg}))
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            pieces = [("text_delta", "text", block["text"][k : k + PIECE]) for k in range(0, len(block["text"]), PIECE)]
        elif block["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            text = block["thinking"]
            pieces = [("thinking_delta", "thinking", text[k : k + PIECE]) for k in range(0, len(text), PIECE)]
            pieces.append(("signature_delta", "signature", block["signature"]))
        elif block["type"] == "redacted_thinking":
            start, pieces = block, []
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            args = orjson.dumps(block["input"]).decode()
            pieces = [("input_json_delta", "partial_json", "")]
            pieces += [("input_json_delta", "partial_json", args[k : k + PIECE]) for k in range(0, len(args), PIECE)]
        await resp.write(_event("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}))
        if i == 0:
            await resp.write(_event("ping", {"type": "ping"}))
        for n, (dtype, key, piece) in enumerate(pieces):
            await resp.write(_event("content_block_delta",
                                    {"type": "content_block_delta", "index": i, "delta": {"type": dtype, key: piece}}))
            if error is not None and n == 0:
                await resp.write(_event("error", {"type": "error", "error": error}))
                return resp
        await resp.write(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
    await resp.write(_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                              "usage": {"output_tokens": _output_tokens(blocks)}}))
    await resp.write(_event("message_stop", {"type": "message_stop"}))
    await resp.write_eof()
    return resp


async def messages(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    headers = {k.lower(): v for k, v in request.headers.items()}
    records = request.app[RECORDS]
    problem = _validate(request, body)
    if problem is not None:
        records.append(Received(headers, body, problem[0]))
        return web.json_response(problem[1], status=problem[0], dumps=lambda o: orjson.dumps(o).decode())
    script = request.app[SCRIPT]
    error: dict[str, Any] | None = None
    if script:
        status, payload = script.pop(0)
        if status == "stream_error":
            error = payload
        else:
            records.append(Received(headers, body, status))
            return web.json_response(payload, status=status, dumps=lambda o: orjson.dumps(o).decode())
    records.append(Received(headers, body, 200))
    blocks, stop = _answer(body, request.app[OPTIONS])
    if body.get("stream"):
        return await _stream(request, body, blocks, stop, error)
    msg = {"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant", "content": blocks,
           "model": body["model"], "stop_reason": stop, "stop_sequence": None,
           "usage": _usage(request.app[OPTIONS], _output_tokens(blocks))}
    return web.json_response(msg, dumps=lambda o: orjson.dumps(o).decode())


async def count(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    headers = {k.lower(): v for k, v in request.headers.items()}
    records = request.app[RECORDS]
    problem = None
    if not request.headers.get("x-api-key"):
        problem = 401, error_body("authentication_error", "x-api-key header is required")
    elif not isinstance(body, dict) or "model" not in body or not isinstance(body.get("messages"), list):
        problem = 400, error_body("invalid_request_error", "model and messages: Field required")
    if problem is not None:
        records.append(Received(headers, body, problem[0]))
        return web.json_response(problem[1], status=problem[0])
    records.append(Received(headers, body, 200))
    return web.json_response({"input_tokens": count_tokens(body)})


def build_app(options: FakeOptions | None = None) -> web.Application:
    app = web.Application()
    app[RECORDS] = []
    app[SCRIPT] = []
    app[OPTIONS] = options or FakeOptions()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count)
    return app
