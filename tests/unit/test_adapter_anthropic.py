"""The anthropic adapter: OpenAI chat requests -> Messages API requests, and Messages answers (whole, streamed
and errors) -> OpenAI's shapes. No sockets; recorded streams are replayed split at every byte offset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.adapters import adapter_for
from relay.adapters.anthropic import AnthropicAdapter, AnthropicStream
from relay.errors import InvalidRequest
from relay.tokens import count_text
from relay.types import KeyRecord, RelayRequest, Target

DATA = Path(__file__).resolve().parent.parent / "data"
ADAPTER = AnthropicAdapter()
KEY = KeyRecord("key_1", "test", "hash", "sk-test")
TARGET = Target("claude", "anthropic", "https://api.anthropic.com", 0, "ak-1", "claude-sonnet-4-5-20250929")
USER = {"role": "user", "content": "Hi"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
WEATHER_TOOL = {"name": "get_weather", "description": "Current weather", "input_schema": WEATHER["function"]["parameters"]}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _req(body: dict[str, Any], stream: bool = False, wants_usage: bool = False) -> RelayRequest:
    body = {"model": "claude-sonnet-4-5", **body}
    return RelayRequest(
        id="r1", endpoint="chat/completions", model=body["model"], body=orjson.dumps(body), json=body,
        stream=stream, wants_usage=wants_usage, key=KEY, started=0.0,
    )


def _built(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    up = ADAPTER.build_request(_req(body, stream), TARGET)
    assert isinstance(up.body, bytes)
    return orjson.loads(up.body)  # type: ignore[no-any-return]


def _text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


# -- requests --------------------------------------------------------------------------------------------

BASE = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 4096}

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", {"messages": [USER]}, {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}]}),
    ("system hoisted", {"messages": [{"role": "system", "content": "Be brief."}, USER]},
     {**BASE, "system": "Be brief.", "messages": [{"role": "user", "content": [_text("Hi")]}]}),
    ("several system messages", {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "A"}]}, {"role": "developer", "content": "B"}, USER]},
     {**BASE, "system": [_text("A"), _text("B")], "messages": [{"role": "user", "content": [_text("Hi")]}]}),
    ("same roles merged, empty text dropped", {"messages": [
        USER, {"role": "user", "content": "there"}, {"role": "assistant", "content": "Yo"},
        {"role": "assistant", "content": ""}, {"role": "assistant", "content": [{"type": "text", "text": "!"}]},
        {"role": "user", "content": "Bye"}]},
     {**BASE, "messages": [
         {"role": "user", "content": [_text("Hi"), _text("there")]},
         {"role": "assistant", "content": [_text("Yo"), _text("!")]},
         {"role": "user", "content": [_text("Bye")]}]}),
    ("images: URL and data URI", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]},
     {**BASE, "messages": [{"role": "user", "content": [
         _text("What is this?"),
         {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}),
    ("tools, default choice", {"messages": [USER], "tools": [WEATHER]},
     {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}], "tools": [WEATHER_TOOL]}),
    ("tool_choice required, no parallel", {"messages": [USER], "tools": [WEATHER], "tool_choice": "required",
                                           "parallel_tool_calls": False},
     {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}], "tools": [WEATHER_TOOL],
      "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}),
    ("tool_choice auto, no parallel", {"messages": [USER], "tools": [WEATHER], "parallel_tool_calls": False},
     {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}], "tools": [WEATHER_TOOL],
      "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ("tool_choice none", {"messages": [USER], "tools": [WEATHER], "tool_choice": "none"},
     {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}], "tools": [WEATHER_TOOL],
      "tool_choice": {"type": "none"}}),
    ("tool_choice named", {"messages": [USER], "tools": [WEATHER],
                           "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}], "tools": [WEATHER_TOOL],
      "tool_choice": {"type": "tool", "name": "get_weather"}}),
    ("tool round trip", {"messages": [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "And so?"}]},
     {**BASE, "messages": [
         {"role": "user", "content": [_text("Hi")]},
         {"role": "assistant", "content": [
             {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
             {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}}]},
         {"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
             {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
             _text("And so?")]}]}),
    ("sampling and limits", {"messages": [USER], "max_tokens": 50, "max_completion_tokens": 99, "temperature": 1.7,
                             "top_p": 0.9, "stop": "END", "user": "u-42"},
     {**BASE, "max_tokens": 99, "messages": [{"role": "user", "content": [_text("Hi")]}], "temperature": 1.0,
      "top_p": 0.9, "stop_sequences": ["END"], "metadata": {"user_id": "u-42"}}),
    ("max_tokens and stop list", {"messages": [USER], "max_tokens": 50, "stop": ["a", "b"], "temperature": 0.2},
     {**BASE, "max_tokens": 50, "messages": [{"role": "user", "content": [_text("Hi")]}], "temperature": 0.2,
      "stop_sequences": ["a", "b"]}),
    ("response_format json_schema: a forced tool", {"messages": [USER], "response_format": {
        "type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": SCHEMA}}},
     {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}],
      "tools": [{"name": "city", "description": "Give the answer as this tool's input.", "input_schema": SCHEMA}],
      "tool_choice": {"type": "tool", "name": "city"}}),
    ("response_format text: nothing", {"messages": [USER], "response_format": {"type": "text"}},
     {**BASE, "messages": [{"role": "user", "content": [_text("Hi")]}]}),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_request_mapping(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert _built(body) == expected


def test_request_url_headers_and_stream() -> None:
    up = ADAPTER.build_request(_req({"messages": [USER]}, stream=True), TARGET)
    assert up.method == "POST" and up.url == "https://api.anthropic.com/v1/messages"
    assert up.headers["x-api-key"] == "ak-1"
    assert up.headers["anthropic-version"] == "2023-06-01"
    assert up.headers["content-type"] == "application/json"
    assert "Authorization" not in up.headers
    assert orjson.loads(up.body)["stream"] is True  # type: ignore[arg-type]
    # a base_url written with /v1 (as some proxies document it) is not doubled
    v1 = Target("claude", "anthropic", "http://127.0.0.1:9/v1", 0, "ak-1", "m")
    assert ADAPTER.build_request(_req({"messages": [USER]}), v1).url == "http://127.0.0.1:9/v1/messages"
    assert adapter_for("anthropic").__class__ is AnthropicAdapter


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
    {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "function", "name": "f", "content": "x"}]},
    {"messages": [USER], "n": 2},
    {"messages": [USER], "tools": [WEATHER], "response_format": {
        "type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}},
])
def test_requests_it_cannot_translate_are_400(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as e:
        _built(body)
    assert e.value.status == 400


# -- whole responses -------------------------------------------------------------------------------------


def _msg(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> bytes:
    return orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    })


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}

RESPONSE_CASES: list[tuple[str, dict[str, Any], bytes, dict[str, Any], str]] = [
    ("text", {}, _msg([_text("Hello"), _text(" world")]),
     {"role": "assistant", "content": "Hello world", "refusal": None}, "stop"),
    ("stop sequence", {}, _msg([_text("a")], "stop_sequence"), {"role": "assistant", "content": "a", "refusal": None}, "stop"),
    ("max tokens", {}, _msg([_text("a")], "max_tokens"), {"role": "assistant", "content": "a", "refusal": None}, "length"),
    ("tool use", {}, _msg([_text("Checking."), TOOL_USE], "tool_use"),
     {"role": "assistant", "content": "Checking.", "refusal": None, "tool_calls": [
         {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
     "tool_calls"),
    ("tool use only", {}, _msg([TOOL_USE], "tool_use"),
     {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
         {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
     "tool_calls"),
    ("json_schema answer", {"response_format": {"type": "json_schema", "json_schema": {"name": "get_weather", "schema": SCHEMA}}},
     _msg([TOOL_USE], "tool_use"), {"role": "assistant", "content": '{"location":"Paris"}', "refusal": None}, "stop"),
    ("json_schema answer, text around it dropped",
     {"response_format": {"type": "json_schema", "json_schema": {"name": "get_weather", "schema": SCHEMA}}},
     _msg([_text("Sure:"), TOOL_USE, _text("Done.")], "tool_use"),
     {"role": "assistant", "content": '{"location":"Paris"}', "refusal": None}, "stop"),
]


@pytest.mark.parametrize(("extra", "body", "message", "finish"), [c[1:] for c in RESPONSE_CASES],
                         ids=[c[0] for c in RESPONSE_CASES])
def test_response_mapping(extra: dict[str, Any], body: bytes, message: dict[str, Any], finish: str) -> None:
    out, usage = ADAPTER.parse_response(_req({"messages": [USER], **extra}), 200, body)
    doc = orjson.loads(out)
    assert doc["object"] == "chat.completion" and doc["model"] == "claude-sonnet-4-5" and doc["id"] == "msg_1"
    assert doc["choices"] == [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.source) == (10, 5, "upstream")
    assert doc["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                            "prompt_tokens_details": {"cached_tokens": 0}}


def test_response_usage_counts_cached_input() -> None:
    body = _msg([_text("a")], cache_read_input_tokens=100, cache_creation_input_tokens=7)
    out, usage = ADAPTER.parse_response(_req({"messages": [USER]}), 200, body)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (117, 5, 100)
    assert orjson.loads(out)["usage"]["prompt_tokens_details"] == {"cached_tokens": 100}


def test_response_that_is_not_a_message_goes_through() -> None:
    assert ADAPTER.parse_response(_req({"messages": [USER]}), 200, b"not json") == (b"not json", None)


# -- errors ----------------------------------------------------------------------------------------------


def _err(etype: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"})


@pytest.mark.parametrize(("status", "etype", "kind", "otype"), [
    (400, "invalid_request_error", "client", "invalid_request_error"),
    (401, "authentication_error", "auth", "authentication_error"),
    (404, "not_found_error", "client", "invalid_request_error"),
    (413, "request_too_large", "client", "invalid_request_error"),
    (429, "rate_limit_error", "rate_limited", "rate_limit_error"),
    (500, "api_error", "server", "server_error"),
    (529, "overloaded_error", "server", "server_error"),
])
def test_errors(status: int, etype: str, kind: str, otype: str) -> None:
    f = ADAPTER.parse_error(status, {"retry-after": "3"}, _err(etype, "it went wrong"))
    assert (f.status, f.kind, f.content_type) == (status, kind, "application/json")
    assert f.retryable == (kind != "client")
    assert orjson.loads(f.body) == {"error": {"message": "it went wrong", "type": otype, "param": None, "code": etype}}
    assert f.retry_after == 3.0


def test_error_that_is_not_json() -> None:
    f = ADAPTER.parse_error(502, {}, b"<html>Bad gateway</html>")
    assert f.kind == "server"
    assert orjson.loads(f.body)["error"]["message"] == "The upstream answered HTTP 502."


# -- streams ---------------------------------------------------------------------------------------------


def _frames(out: bytes) -> list[bytes]:
    assert out.endswith(b"\n\n")
    return out.split(b"\n\n")[:-1]


def _run(raw: bytes, pieces: list[int], wants_usage: bool = False, schema: str | None = None) -> tuple[bytes, AnthropicStream]:
    h = AnthropicStream("claude-sonnet-4-5", wants_usage, schema, created=1700000000)
    out, start = b"", 0
    for end in [*pieces, len(raw)]:
        out += h.feed(raw[start:end])
        start = end
    return out + h.close(), h


def _payloads(out: bytes) -> list[Any]:
    frames = _frames(out)
    assert frames[-1] == b"data: [DONE]"
    return [orjson.loads(f.removeprefix(b"data: ")) for f in frames[:-1]]


TEXT = 'Bonjour! Paris is sunny today: 21°C, a café terrace kind of day ☀️.\nSay "when".'


@pytest.mark.parametrize("name", ["anthropic_text.sse", "anthropic_tools.sse"])
def test_recorded_stream_split_at_every_offset(name: str) -> None:
    raw = (DATA / name).read_bytes()
    whole, h = _run(raw, [], wants_usage=True)
    assert h.done and h.events == raw.count(b"\nevent: ") + 1
    for i in range(len(raw) + 1):
        assert _run(raw, [i], wants_usage=True)[0] == whole, i
    assert _run(raw, list(range(1, len(raw))), wants_usage=True)[0] == whole


def test_text_stream() -> None:
    out, h = _run((DATA / "anthropic_text.sse").read_bytes(), [])
    chunks = _payloads(out)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"
               and c["model"] == "claude-sonnet-4-5" and c["created"] == 1700000000 for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == TEXT
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert h.usage is not None
    assert (h.usage.prompt_tokens, h.usage.completion_tokens, h.usage.cached_tokens, h.usage.source) == (33, 24, 12, "upstream")
    assert h.completion.tokens() == count_text(TEXT, "claude-sonnet-4-5")


def test_usage_chunk_only_when_asked() -> None:
    raw = (DATA / "anthropic_text.sse").read_bytes()
    without = _payloads(_run(raw, [])[0])
    with_usage = _payloads(_run(raw, [], wants_usage=True)[0])
    assert with_usage[:-1] == without
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == {"prompt_tokens": 33, "completion_tokens": 24, "total_tokens": 57,
                                       "prompt_tokens_details": {"cached_tokens": 12}}


def test_tool_stream() -> None:
    out, h = _run((DATA / "anthropic_tools.sse").read_bytes(), [])
    chunks = _payloads(out)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Let me check the weather in both cities."
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls", ()):
            if "id" in tc:
                assert tc["index"] not in calls and tc["type"] == "function" and tc["function"]["arguments"] == ""
                calls[tc["index"]] = {"id": tc["id"], "name": tc["function"]["name"], "args": ""}
            else:
                assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
                calls[tc["index"]]["args"] += tc["function"]["arguments"]
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and calls[1]["name"] == "get_weather"
    assert orjson.loads(calls[0]["args"]) == {"location": "São Paulo", "unit": "c"}
    assert orjson.loads(calls[1]["args"]) == {"location": "Paris", "unit": "f"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert h.usage is not None and (h.usage.prompt_tokens, h.usage.completion_tokens) == (472, 89)


def test_schema_tool_streams_as_content() -> None:
    raw = (DATA / "anthropic_tools.sse").read_bytes()
    chunks = _payloads(_run(raw, [], schema="get_weather")[0])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.startswith("Let me check the weather in both cities.{")
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_error_event_ends_without_done() -> None:
    raw = (DATA / "anthropic_text.sse").read_bytes()
    cut = raw.index(b"event: content_block_delta")
    raw = raw[:cut] + b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    out, h = _run(raw, [])
    frames = _frames(out)
    assert b"[DONE]" not in out and not h.done
    assert orjson.loads(frames[-1].removeprefix(b"data: ")) == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}}
    assert h.completion.raw_bytes == 0  # the error message is not completion text


def test_stream_handler_from_adapter() -> None:
    h = ADAPTER.stream_handler(_req({"messages": [USER]}, stream=True, wants_usage=True))
    assert isinstance(h, AnthropicStream) and h.usage is None and not h.done and h.events == 0
