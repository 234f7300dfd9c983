"""The gemini adapter: OpenAI chat/embeddings <-> Gemini generateContent / streamGenerateContent / batchEmbedContents."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.adapters import adapter_for
from relay.adapters.gemini import GeminiAdapter, clean_schema, to_gemini_request, tool_call_id
from relay.errors import InvalidRequest
from relay.types import KeyRecord, RelayRequest, Target

DATA = Path(__file__).resolve().parent.parent / "data"
ADAPTER = GeminiAdapter()
TARGET = Target("gem", "gemini", "https://generativelanguage.googleapis.com", 0, "gk-secret", "gemini-2.5-flash")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather", "strict": True,
    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "properties": {"location": {"type": "string", "default": "Paris"},
                                  "unit": {"type": ["string", "null"], "enum": ["c", "f"]}},
                   "required": ["location"], "additionalProperties": False}}}
WEATHER_DECL = {"name": "get_weather", "description": "Current weather", "parameters": {
    "type": "OBJECT", "properties": {"location": {"type": "STRING"},
                                     "unit": {"type": "STRING", "nullable": True, "enum": ["c", "f"]}},
    "required": ["location"]}}


def req(body: dict[str, Any], endpoint: str = "chat/completions", rid: str = "req1") -> RelayRequest:
    body = {"model": "gemini-2.5-flash", **body}
    return RelayRequest(
        id=rid, endpoint=endpoint, model=body["model"], body=orjson.dumps(body), json=body,
        stream=bool(body.get("stream")), wants_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        key=KeyRecord("key_1", "t", "h", "sk-AbCd"), started=0.0,
    )


def test_registered() -> None:
    assert isinstance(adapter_for("gemini"), GeminiAdapter)


# -- requests ---------------------------------------------------------------------------------------------

U = {"role": "user", "content": "Hi"}

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", {"messages": [U]}, {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}),
    ("system and developer -> systemInstruction",
     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]}, U]},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
      "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "No emoji."}]}}),
    ("assistant -> model, same roles merged",
     {"messages": [U, {"role": "user", "content": "There"}, {"role": "assistant", "content": "Yo"}, U]},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}, {"text": "There"}]},
                   {"role": "model", "parts": [{"text": "Yo"}]}, {"role": "user", "parts": [{"text": "Hi"}]}]}),
    ("images: data URI inline, https URL as fileData",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "Compare"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
         {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.webp?x=1", "detail": "low"}}]}]},
     {"contents": [{"role": "user", "parts": [
         {"text": "Compare"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
         {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/a/cat.webp?x=1"}}]}]}),
    ("tools, tool_choice auto",
     {"messages": [U], "tools": [WEATHER], "tool_choice": "auto"},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "tools": [{"functionDeclarations": [WEATHER_DECL]}],
      "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}),
    ("tool_choice none / required / named",
     {"messages": [U], "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "tools": [{"functionDeclarations": [WEATHER_DECL]}],
      "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}}),
    ("a function without parameters has none",
     {"messages": [U], "tools": [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}],
      "tool_choice": "required"},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "tools": [{"functionDeclarations": [{"name": "now"}]}],
      "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
    ("tool round trip: functionCall, functionResponse (JSON and text)",
     {"messages": [U, {"role": "assistant", "content": None, "tool_calls": [
         {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
         {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 21}"},
         {"role": "tool", "tool_call_id": "call_b", "content": "noon"}]},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]},
                   {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                                               {"functionCall": {"name": "get_time", "args": {}}}]},
                   {"role": "user", "parts": [
                       {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                       {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}}]}]}),
    ("generationConfig",
     {"messages": [U], "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "stop": "END", "n": 2, "seed": 7},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "generationConfig": {
         "temperature": 0.2, "topP": 0.9, "candidateCount": 2, "seed": 7, "maxOutputTokens": 100, "stopSequences": ["END"]}}),
    ("max_completion_tokens wins, stop list",
     {"messages": [U], "max_tokens": 100, "max_completion_tokens": 50, "stop": ["a", "b"]},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
      "generationConfig": {"maxOutputTokens": 50, "stopSequences": ["a", "b"]}}),
    ("json_object", {"messages": [U], "response_format": {"type": "json_object"}},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "generationConfig": {"responseMimeType": "application/json"}}),
    ("json_schema cleaned",
     {"messages": [U], "response_format": {"type": "json_schema", "json_schema": {"name": "c", "strict": True, "schema": {
         "type": "object", "properties": {"city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
         "required": ["city"], "additionalProperties": False}}}},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "generationConfig": {
         "responseMimeType": "application/json", "responseSchema": {
             "type": "OBJECT", "properties": {"city": {"type": "STRING"}, "tags": {"type": "ARRAY", "items": {"type": "STRING"}}},
             "required": ["city"]}}}),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_request_mapping(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_gemini_request(body) == expected


@pytest.mark.parametrize("choice, mode", [("none", "NONE"), ("required", "ANY"), ("auto", "AUTO")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    out = to_gemini_request({"messages": [U], "tools": [WEATHER], "tool_choice": choice})
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_clean_schema_drops_what_gemini_rejects() -> None:
    schema = {"$schema": "x", "$id": "y", "title": "T", "type": "object", "additionalProperties": False, "strict": True,
              "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "null"}], "default": "q"},
                             "b": {"const": "fixed"}, "c": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]},
                             "d": {"type": "integer", "enum": [1, 2]}}}
    assert clean_schema(schema) == {"type": "OBJECT", "properties": {
        "a": {"nullable": True, "type": "STRING"}, "b": {"enum": ["fixed"], "type": "STRING"},
        "c": {"anyOf": [{"type": "INTEGER", "minimum": 0}, {"type": "STRING"}]},
        "d": {"type": "INTEGER", "enum": ["1", "2"]}}}


def test_build_request_url_and_key_header() -> None:
    r = ADAPTER.build_request(req({"messages": [U]}), TARGET)
    assert r.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert r.headers["x-goog-api-key"] == "gk-secret"
    assert "gk-secret" not in r.url and "key=" not in r.url
    s = ADAPTER.build_request(req({"messages": [U], "stream": True}), TARGET)
    assert s.url.endswith("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    t = Target("gem", "gemini", "https://x.example/v1beta/", 0, "k", "models/gemini-pro")
    assert ADAPTER.build_request(req({"messages": [U]}), t).url == "https://x.example/v1beta/models/gemini-pro:generateContent"


def test_tool_message_without_a_matching_call_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        to_gemini_request({"messages": [U, {"role": "tool", "tool_call_id": "nope", "content": "x"}]})


def test_embeddings_request() -> None:
    r = ADAPTER.build_request(req({"model": "text-embedding-004", "input": ["a", "b"], "dimensions": 4}, "embeddings"),
                              Target("gem", "gemini", "https://g.example", 0, "k", "text-embedding-004"))
    assert r.url == "https://g.example/v1beta/models/text-embedding-004:batchEmbedContents"
    assert orjson.loads(r.body) == {"requests": [  # type: ignore[arg-type]
        {"model": "models/text-embedding-004", "outputDimensionality": 4, "content": {"parts": [{"text": "a"}]}},
        {"model": "models/text-embedding-004", "outputDimensionality": 4, "content": {"parts": [{"text": "b"}]}}]}
    with pytest.raises(InvalidRequest):
        ADAPTER.build_request(req({"input": [[1, 2, 3]]}, "embeddings"), TARGET)


def test_unsupported_endpoint() -> None:
    with pytest.raises(InvalidRequest):
        ADAPTER.build_request(req({"prompt": "x"}, "images/generations"), TARGET)


# -- responses --------------------------------------------------------------------------------------------

def _resp(parts: list[dict[str, Any]], reason: str = "STOP", **meta: int) -> bytes:
    return orjson.dumps({"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": reason, "index": 0}],
                         "usageMetadata": meta or {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8},
                         "modelVersion": "gemini-2.5-flash", "responseId": "abc"})


FINISH_CASES = [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
                ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
                ("OTHER", "stop")]


@pytest.mark.parametrize("gemini, openai", FINISH_CASES)
def test_finish_reasons(gemini: str, openai: str) -> None:
    body, _ = ADAPTER.parse_response(req({"messages": [U]}), 200, _resp([{"text": "x"}], gemini))
    assert orjson.loads(body)["choices"][0]["finish_reason"] == openai


def test_text_response_and_usage() -> None:
    raw = _resp([{"text": "thinking...", "thought": True}, {"text": "Hello "}, {"text": "there"}], promptTokenCount=10,
                candidatesTokenCount=4, thoughtsTokenCount=6, cachedContentTokenCount=3, totalTokenCount=20)
    body, usage = ADAPTER.parse_response(req({"messages": [U]}), 200, raw)
    doc = orjson.loads(body)
    assert doc["object"] == "chat.completion" and doc["model"] == "gemini-2.5-flash" and doc["id"] == "chatcmpl-abc"
    assert doc["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": None,
                                                       "reasoning_content": "thinking..."},
                               "logprobs": None, "finish_reason": "stop"}]
    assert doc["usage"]["prompt_tokens"] == 10 and doc["usage"]["completion_tokens"] == 10
    assert doc["usage"]["total_tokens"] == 20 and doc["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.source, usage.cached_tokens) == (
        10, 10, "upstream", 3)


def test_function_call_response_has_stable_ids() -> None:
    raw = _resp([{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                 {"functionCall": {"name": "get_weather", "args": {"location": "Rome"}}}])
    a = orjson.loads(ADAPTER.parse_response(req({"messages": [U]}), 200, raw)[0])
    b = orjson.loads(ADAPTER.parse_response(req({"messages": [U]}, rid="other"), 200, raw)[0])
    calls = a["choices"][0]["message"]["tool_calls"]
    assert a["choices"][0]["finish_reason"] == "tool_calls" and a["choices"][0]["message"]["content"] is None
    assert [c["id"] for c in calls] == [c["id"] for c in b["choices"][0]["message"]["tool_calls"]]
    assert calls[0]["id"] != calls[1]["id"] and calls[0]["id"] == tool_call_id(0, 0, "get_weather")
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"location": "Paris"}, {"location": "Rome"}]


def test_n_candidates() -> None:
    raw = orjson.dumps({"candidates": [{"content": {"parts": [{"text": f"c{i}"}], "role": "model"}, "finishReason": "STOP",
                                        "index": i} for i in range(3)]})
    doc = orjson.loads(ADAPTER.parse_response(req({"messages": [U], "n": 3}), 200, raw)[0])
    assert [(c["index"], c["message"]["content"]) for c in doc["choices"]] == [(0, "c0"), (1, "c1"), (2, "c2")]


def test_prompt_blocked() -> None:
    raw = orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}})
    doc = orjson.loads(ADAPTER.parse_response(req({"messages": [U]}), 200, raw)[0])
    assert doc["choices"][0]["finish_reason"] == "content_filter"


def test_embeddings_response_float_and_base64() -> None:
    raw = orjson.dumps({"embeddings": [{"values": [0.5, -1.25]}, {"values": [1.0, 2.0]}]})
    body, usage = ADAPTER.parse_response(req({"input": ["hello world", "x"]}, "embeddings"), 200, raw)
    doc = orjson.loads(body)
    assert doc["object"] == "list" and [d["embedding"] for d in doc["data"]] == [[0.5, -1.25], [1.0, 2.0]]
    assert usage is not None and usage.source == "estimate" and usage.prompt_tokens == doc["usage"]["prompt_tokens"] > 0
    body, _ = ADAPTER.parse_response(req({"input": "hello", "encoding_format": "base64"}, "embeddings"), 200, raw)
    first = orjson.loads(body)["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(first)) == (0.5, -1.25)


# -- errors -------------------------------------------------------------------------------------------------

ERROR_CASES = [
    (400, "INVALID_ARGUMENT", None, "client", "invalid_request_error"),
    (400, "INVALID_ARGUMENT", "API_KEY_INVALID", "auth", "authentication_error"),
    (403, "PERMISSION_DENIED", None, "auth", "authentication_error"),
    (429, "RESOURCE_EXHAUSTED", None, "rate_limited", "rate_limit_error"),
    (500, "INTERNAL", None, "server", "server_error"),
    (503, "UNAVAILABLE", None, "server", "server_error"),
]


@pytest.mark.parametrize("status, name, reason, kind, type_", ERROR_CASES)
def test_parse_error(status: int, name: str, reason: str | None, kind: str, type_: str) -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}] if reason else []
    if status == 429:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"})
    raw = orjson.dumps({"error": {"code": status, "message": "boom", "status": name, "details": details}})
    f = ADAPTER.parse_error(status, {}, raw)
    assert f.kind == kind and f.status == status and f.content_type == "application/json"
    assert orjson.loads(f.body) == {"error": {"message": "boom", "type": type_, "param": None, "code": name}}
    if status == 429:
        assert f.retry_after == 37.0


def test_parse_error_not_json() -> None:
    f = ADAPTER.parse_error(502, {}, b"<html>bad gateway</html>")
    assert f.kind == "server" and orjson.loads(f.body)["error"]["message"] == "<html>bad gateway</html>"


# -- streams ------------------------------------------------------------------------------------------------

_CREATED = re.compile(rb'"created":\d+')


def _run(raw: bytes, cuts: list[int], wants_usage: bool = True) -> tuple[bytes, Any]:
    body = {"messages": [U], "stream": True}
    if wants_usage:
        body["stream_options"] = {"include_usage": True}
    h = ADAPTER.stream_handler(req(body))
    out, prev = [], 0
    for c in [*cuts, len(raw)]:
        out.append(h.feed(raw[prev:c]))
        prev = c
    out.append(h.close())
    return _CREATED.sub(b'"created":0', b"".join(out)), h  # the clock may tick between two runs


def _frames(out: bytes) -> list[Any]:
    assert out.endswith(b"data: [DONE]\n\n")
    return [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]


@pytest.mark.parametrize("name", ["gemini_stream_text.sse", "gemini_stream_tools.sse"])
def test_recorded_stream_split_at_every_offset(name: str) -> None:
    raw = (DATA / name).read_bytes()
    whole, h = _run(raw, [])
    assert h.done and h.events == raw.count(b"data:")
    for i in range(1, len(raw)):
        got, h2 = _run(raw, [i])
        assert got == whole, i
        assert h2.done and h2.usage == h.usage
    for step in (1, 7):
        assert _run(raw, list(range(step, len(raw), step)))[0] == whole


def test_text_stream_frames() -> None:
    raw = (DATA / "gemini_stream_text.sse").read_bytes()
    out, h = _run(raw, [])
    frames = _frames(out)
    expected = "".join(
        p["text"] for line in raw.split(b"\r\n\r\n") if line
        for c in orjson.loads(line[6:])["candidates"] for p in c["content"]["parts"])
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(f["choices"][0]["delta"].get("content", "") for f in frames if f["choices"]) == expected
    assert all(f["object"] == "chat.completion.chunk" and f["id"] == "chatcmpl-req1" for f in frames)
    assert frames[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert frames[-1]["choices"] == [] and frames[-1]["usage"]["prompt_tokens"] == 12
    assert frames[-1]["usage"]["completion_tokens"] == 41 + 25
    assert h.usage is not None and (h.usage.prompt_tokens, h.usage.completion_tokens, h.usage.cached_tokens) == (12, 66, 4)
    assert h.completion.tokens() > 10


def test_tool_stream_frames() -> None:
    out, h = _run((DATA / "gemini_stream_tools.sse").read_bytes(), [], wants_usage=False)
    frames = _frames(out)
    calls = [tc for f in frames for tc in f["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0, 1]
    assert [c["id"] for c in calls] == [tool_call_id(0, 0, "get_weather"), tool_call_id(0, 1, "get_weather")]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [
        {"location": "Paris", "unit": "c"}, {"location": "São Paulo", "unit": "c", "note": "line\nbreak"}]
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(f["choices"] for f in frames)  # no usage chunk unless asked
    assert h.usage is not None and h.usage.total_tokens == 90


def test_stream_without_finish_reason_is_not_done() -> None:
    raw = (DATA / "gemini_stream_text.sse").read_bytes()
    cut = raw[: raw.rfind(b"data:")]  # the last chunk (with finishReason) never came
    out, h = _run(cut, [])
    assert not h.done and h.usage is None
    assert b"[DONE]" not in out and b"finish_reason\":\"stop" not in out
    assert h.completion.raw_bytes > 0
