"""The Gemini-native routes on openai, azure and anthropic channels: Gemini <-> OpenAI chat and embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.adapters import adapter_for
from relay.adapters.gemini_chat import GeminiOverChat, openai_request
from relay.adapters.gemini_output import GeminiChatStream, from_chat_completion, from_embeddings
from relay.adapters.gemini_request import camel_keys, from_gemini_schema, to_chat_request, to_embeddings_request
from relay.adapters.openai import OpenAIPassthrough
from relay.errors import InvalidRequest
from relay.types import KeyRecord, RelayRequest, Target

DATA = Path(__file__).resolve().parent.parent / "data"
HI = {"role": "user", "parts": [{"text": "Hi"}]}
SCHEMA = {"type": "OBJECT", "properties": {"city": {"type": "STRING", "nullable": True},
                                           "tags": {"type": "ARRAY", "items": {"type": "STRING"}}},
          "required": ["city"], "propertyOrdering": ["city", "tags"]}
JSON_SCHEMA = {"type": "object", "properties": {"city": {"type": ["string", "null"]},
                                                "tags": {"type": "array", "items": {"type": "string"}}},
               "required": ["city"]}
CALL = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
ANSWER = {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}


def req(body: dict[str, Any], endpoint: str = "gemini/generateContent", stream: bool = False,
        query: str = "") -> RelayRequest:
    return RelayRequest(
        id="r1", endpoint=endpoint, model="gpt-4o-mini", body=orjson.dumps(body), json=body, stream=stream,
        wants_usage=True, key=KeyRecord("k", "t", "h", "sk-AbCd"), started=0.0, dialect="gemini", query=query,
    )


def test_registered() -> None:
    for kind in ("openai", "azure", "anthropic"):
        assert isinstance(adapter_for(kind, "gemini/generateContent"), GeminiOverChat)


# -- requests -------------------------------------------------------------------------------------------------

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", {"contents": [HI]}, {"messages": [{"role": "user", "content": "Hi"}]}),
    ("no role is user; several text parts stay parts",
     {"contents": [{"parts": [{"text": "a"}, {"text": "b"}]}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
    ("systemInstruction -> system message",
     {"systemInstruction": {"parts": [{"text": "Be "}, {"text": "brief."}]}, "contents": [HI]},
     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
    ("model turn -> assistant; its thought parts dropped",
     {"contents": [HI, {"role": "model", "parts": [{"text": "hmm", "thought": True}, {"text": "Yo"}]}, HI]},
     {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                   {"role": "user", "content": "Hi"}]}),
    ("inlineData image, audio and pdf; fileData URI",
     {"contents": [{"role": "user", "parts": [
         {"text": "Look"}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
         {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}},
         {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
         {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
         {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
         {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
         {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]}),
    ("functionCall / functionResponse with ids",
     {"contents": [HI, {"role": "model", "parts": [{"functionCall": {**CALL["functionCall"], "id": "c1"}}]},
                   {"role": "user", "parts": [{"functionResponse": {**ANSWER["functionResponse"], "id": "c1"}},
                                              {"text": "and?"}]}]},
     {"messages": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": '{"temp":21}'},
                   {"role": "user", "content": "and?"}]}),
    ("tools, schema types back to JSON Schema, toolConfig ANY with one name",
     {"contents": [HI], "tools": [{"functionDeclarations": [
         {"name": "f", "description": "F", "parameters": SCHEMA},
         {"name": "g", "parametersJsonSchema": {"type": "object", "additionalProperties": False}},
         {"name": "h"}]}, {"googleSearch": {}}],
      "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}},
     {"messages": [{"role": "user", "content": "Hi"}], "tools": [
         {"type": "function", "function": {"name": "f", "description": "F", "parameters": JSON_SCHEMA}},
         {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "additionalProperties": False}}},
         {"type": "function", "function": {"name": "h", "parameters": {"type": "object", "properties": {}}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("toolConfig NONE",
     {"contents": [HI], "tools": [{"functionDeclarations": [{"name": "h"}]}],
      "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}},
     {"messages": [{"role": "user", "content": "Hi"}],
      "tools": [{"type": "function", "function": {"name": "h", "parameters": {"type": "object", "properties": {}}}}],
      "tool_choice": "none"}),
    ("generationConfig; safety settings and topK dropped",
     {"contents": [HI], "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
      "generationConfig": {"temperature": 0.3, "topP": 0.9, "topK": 40, "maxOutputTokens": 100,
                           "stopSequences": ["END"], "candidateCount": 2, "presencePenalty": 0.1,
                           "frequencyPenalty": 0.2, "seed": 7}},
     {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.3, "top_p": 0.9, "max_tokens": 100,
      "n": 2, "presence_penalty": 0.1, "frequency_penalty": 0.2, "seed": 7, "stop": ["END"]}),
    ("responseMimeType + responseSchema -> json_schema",
     {"contents": [HI], "generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA}},
     {"messages": [{"role": "user", "content": "Hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": JSON_SCHEMA}}}),
    ("responseJsonSchema as it is",
     {"contents": [HI], "generationConfig": {"responseMimeType": "application/json",
                                              "responseJsonSchema": {"type": "object"}}},
     {"messages": [{"role": "user", "content": "Hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}}}),
    ("json without a schema -> json_object",
     {"contents": [HI], "generationConfig": {"responseMimeType": "application/json"}},
     {"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}}),
]


@pytest.mark.parametrize("name, body, expected", REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES])
def test_request_translation(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_chat_request(body, "gpt-4o-mini", stream=False) == {"model": "gpt-4o-mini", **expected}


def test_calls_without_ids_are_matched_by_name_in_order() -> None:
    body = {"contents": [HI, {"role": "model", "parts": [CALL, {"functionCall": {"name": "other", "args": {}}}, CALL]},
                         {"role": "user", "parts": [ANSWER, {"functionResponse": {"name": "other", "response": {}}},
                                                    ANSWER]}]}
    out = to_chat_request(body, "m", stream=False)["messages"]
    ids = [c["id"] for c in out[1]["tool_calls"]]
    assert len(set(ids)) == 3 and all(i.startswith("call_") for i in ids)
    assert [m["tool_call_id"] for m in out[2:]] == [ids[0], ids[1], ids[2]]
    assert to_chat_request(body, "m", stream=False) == to_chat_request(body, "m", stream=False)  # stable ids


def test_stream_asks_for_usage() -> None:
    out = to_chat_request({"contents": [HI]}, "m", stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("body, needle", [
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "robot", "parts": [{"text": "x"}]}]}, "valid role"),
    ({"contents": [{"role": "user", "parts": [CALL]}]}, "model turn"),
    ({"contents": ["hi"]}, "contents[0]"),
])
def test_request_errors(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        to_chat_request(body, "m", stream=False)
    assert needle in e.value.message


def test_schema_round_trip_keeps_what_json_schema_knows() -> None:
    assert from_gemini_schema({"type": "STRING", "enum": ["a", "b"], "description": "d", "format": "enum"}) == {
        "type": "string", "enum": ["a", "b"], "description": "d", "format": "enum"}
    assert from_gemini_schema({"anyOf": [{"type": "INTEGER"}, {"type": "NUMBER"}]}) == {
        "anyOf": [{"type": "integer"}, {"type": "number"}]}


def test_the_client_query_stays_behind() -> None:
    r = openai_request(req({"contents": [HI]}, query="key=sk-client&alt=sse"))
    assert r.query == "" and r.endpoint == "chat/completions" and r.dialect == "openai"
    up = GeminiOverChat(adapter_for("openai")).build_request(
        req({"contents": [HI]}, query="key=sk-client"), Target("o", "openai", "https://api.example/v1", 0, "ok", "gpt"))
    assert up.url == "https://api.example/v1/chat/completions" and up.headers["Authorization"] == "Bearer ok"


# -- responses ------------------------------------------------------------------------------------------------


def _completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None,
                n: int = 1) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [
        {"index": i, "message": {"role": "assistant", **message}, "finish_reason": finish} for i in range(n)],
        "usage": usage or {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}


RESPONSE_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = [
    ("text", _completion({"content": "Hello"}),
     [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "finishReason": "STOP", "index": 0}],
     {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}),
    ("reasoning -> thought part; reasoning and cached tokens",
     _completion({"content": "42", "reasoning_content": "Think."}, usage={
         "prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30, "prompt_tokens_details": {"cached_tokens": 8},
         "completion_tokens_details": {"reasoning_tokens": 6}}),
     [{"content": {"parts": [{"text": "Think.", "thought": True}, {"text": "42"}], "role": "model"},
       "finishReason": "STOP", "index": 0}],
     {"promptTokenCount": 20, "candidatesTokenCount": 4, "totalTokenCount": 30, "thoughtsTokenCount": 6,
      "cachedContentTokenCount": 8}),
    ("tool calls -> functionCall parts",
     _completion({"content": None, "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}, "tool_calls"),
     [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"x": 1}, "id": "call_1"}}], "role": "model"},
       "finishReason": "STOP", "index": 0}],
     {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}),
    ("length -> MAX_TOKENS, n=2 -> two candidates", _completion({"content": "He"}, "length", n=2),
     [{"content": {"parts": [{"text": "He"}], "role": "model"}, "finishReason": "MAX_TOKENS", "index": i}
      for i in range(2)],
     {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}),
    ("content_filter -> SAFETY", _completion({"content": None}, "content_filter"),
     [{"content": {"parts": [], "role": "model"}, "finishReason": "SAFETY", "index": 0}],
     {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}),
]


@pytest.mark.parametrize("name, completion, candidates, meta", RESPONSE_CASES, ids=[c[0] for c in RESPONSE_CASES])
def test_response_translation(name: str, completion: dict[str, Any], candidates: list[Any], meta: dict[str, Any]) -> None:
    out, usage = from_chat_completion(completion, "gpt-4o-mini", "rid")
    assert out == {"candidates": candidates, "usageMetadata": meta, "modelVersion": "gpt-4o-mini", "responseId": "rid"}
    assert usage is not None and usage.total_tokens == meta["totalTokenCount"]


def test_adapter_parse_response() -> None:
    adapter = GeminiOverChat(adapter_for("openai"))
    body, usage = adapter.parse_response(req({"contents": [HI]}), 200, orjson.dumps(_completion({"content": "Yo"})))
    obj = orjson.loads(body)
    assert obj["candidates"][0]["content"]["parts"] == [{"text": "Yo"}] and usage is not None
    assert usage.prompt_tokens == 9 and usage.source == "upstream"


def test_embeddings_both_ways() -> None:
    one = {"content": {"parts": [{"text": "a"}, {"text": "b"}]}, "outputDimensionality": 4}
    assert to_embeddings_request(one, "e", batch=False) == {"model": "e", "input": ["ab"], "dimensions": 4}
    batch = {"requests": [{"model": "models/e", "content": {"parts": [{"text": "x"}]}},
                          {"model": "models/e", "content": {"parts": [{"text": "y"}]}}]}
    assert to_embeddings_request(batch, "e", batch=True) == {"model": "e", "input": ["x", "y"]}
    with pytest.raises(InvalidRequest):
        to_embeddings_request({"content": {"parts": [{"inlineData": {}}]}}, "e", batch=False)
    answer = {"object": "list", "data": [{"index": 1, "embedding": [0.2]}, {"index": 0, "embedding": [0.1]}]}
    assert from_embeddings(answer, batch=True) == {"embeddings": [{"values": [0.1]}, {"values": [0.2]}]}
    assert from_embeddings(answer, batch=False) == {"embedding": {"values": [0.1]}}


def test_upstream_error_in_google_shape() -> None:
    body = orjson.dumps({"error": {"message": "bad thing", "type": "invalid_request_error", "param": None, "code": None}})
    failure = GeminiOverChat(adapter_for("openai")).parse_error(400, {}, body)
    assert failure.kind == "client" and failure.status == 400
    assert orjson.loads(failure.body) == {"error": {"code": 400, "message": "bad thing", "status": "INVALID_ARGUMENT"}}
    failure = GeminiOverChat(adapter_for("anthropic")).parse_error(
        429, {}, orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}))
    assert failure.kind == "rate_limited"
    assert orjson.loads(failure.body)["error"] == {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}


# -- streams ---------------------------------------------------------------------------------------------------


def _openai_stream(array: bool = False) -> GeminiChatStream:
    return GeminiChatStream(OpenAIPassthrough(keep_usage_chunk=True, model="m"), "m", "rid", array=array)


def _events(out: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e[6:]) for e in out.split(b"\r\n\r\n") if e]


def _chat_deltas(data: bytes) -> tuple[str, str, dict[int, str]]:
    text, reasoning, args = "", "", {}
    for e in data.split(b"\n\n"):
        if not e.startswith(b"data: {"):
            continue
        for c in orjson.loads(e[6:]).get("choices") or ():
            d = c.get("delta") or {}
            text += d.get("content") or ""
            reasoning += d.get("reasoning_content") or ""
            for call in d.get("tool_calls") or ():
                args[call["index"]] = args.get(call["index"], "") + ((call.get("function") or {}).get("arguments") or "")
    return text, reasoning, args


@pytest.mark.parametrize("name", ["chat_stream_text.sse", "chat_stream_tools.sse", "chat_stream_reasoning.sse"])
def test_chat_stream_split_at_every_offset(name: str) -> None:
    data = (DATA / name).read_bytes()
    whole = _openai_stream()
    expected = whole.feed(data) + whole.close()
    assert whole.done and whole.usage is not None
    for cut in range(len(data) + 1):
        h = _openai_stream()
        assert h.feed(data[:cut]) + h.feed(data[cut:]) + h.close() == expected, cut
        assert h.done
    events = _events(expected)
    parts = [p for e in events for c in e["candidates"] for p in c["content"]["parts"]]
    text, reasoning, args = _chat_deltas(data)
    assert "".join(p["text"] for p in parts if "text" in p and not p.get("thought")) == text
    assert "".join(p["text"] for p in parts if p.get("thought")) == reasoning
    calls = [p["functionCall"] for p in parts if "functionCall" in p]
    assert [c["args"] for c in calls] == [orjson.loads(args[i]) for i in sorted(args)]
    last = events[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["totalTokenCount"] == whole.usage.total_tokens
    assert all(e["responseId"] == "rid" and e["modelVersion"] == "m" for e in events)


def test_chat_stream_as_json_array() -> None:
    data = (DATA / "chat_stream_text.sse").read_bytes()
    for cut in range(0, len(data) + 1, 7):
        h = _openai_stream(array=True)
        out = h.feed(data[:cut]) + h.feed(data[cut:]) + h.close()
        items = orjson.loads(out)
        assert out.startswith(b"[{") and out.endswith(b"}\n]") and items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "".join(p["text"] for i in items for c in i["candidates"] for p in c["content"]["parts"]) == _chat_deltas(data)[0]


@pytest.mark.parametrize("name", ["anthropic_text.sse", "anthropic_tools.sse"])
def test_anthropic_stream_through_the_chat_translation(name: str) -> None:
    data = (DATA / name).read_bytes()
    adapter = GeminiOverChat(adapter_for("anthropic"))
    r = req({"contents": [HI]}, stream=True, query="alt=sse")
    whole = adapter.stream_handler(r)
    expected = whole.feed(data) + whole.close()
    assert whole.done and whole.usage is not None and whole.usage.source == "upstream"
    for cut in range(len(data) + 1):
        h = adapter.stream_handler(r)
        got = h.feed(data[:cut]) + h.feed(data[cut:]) + h.close()
        assert _strip_ids(got) == _strip_ids(expected), cut
    events = _events(expected)
    assert events[-1]["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS")
    assert any("text" in p or "functionCall" in p for e in events for c in e["candidates"] for p in c["content"]["parts"])


def _strip_ids(out: bytes) -> list[Any]:
    events = _events(out)
    for e in events:
        e.pop("responseId", None)
        for c in e["candidates"]:
            for p in c["content"]["parts"]:
                (p.get("functionCall") or {}).pop("id", None)
    return events


def test_chat_stream_error_and_cut() -> None:
    h = _openai_stream()
    out = h.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
                 b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n')
    events = _events(out)
    assert events[0]["candidates"][0]["content"]["parts"] == [{"text": "Hi"}]
    assert events[1]["error"] == {"code": 500, "message": "overloaded", "status": "INTERNAL"}
    assert not h.done and h.error_frame("again", "x") == b""  # one terminal event per stream
    cut = _openai_stream()
    cut.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n')
    assert cut.close() == b"" and not cut.done


def test_chat_stream_without_done_but_finished_is_complete() -> None:
    h = _openai_stream()
    out = h.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"length"}]}\n\n') + h.close()
    assert h.done and _events(out)[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"


def test_snake_case_names_are_read_as_camel_case() -> None:
    body = {"system_instruction": {"parts": [{"text": "S"}]}, "contents": [{"role": "user", "parts": [
        {"file_data": {"file_uri": "https://x.example/a.png", "mime_type": "image/png"}},
        {"inline_data": {"mime_type": "image/png", "data": "AA"}}]},
        {"role": "model", "parts": [{"function_call": {"name": "f", "args": {"snake_arg": 1}}}]}],
        "tools": [{"function_declarations": [{"name": "f", "parameters": {"type": "OBJECT", "properties": {
            "snake_prop": {"type": "STRING", "max_length": 3}}}}]}],
        "generation_config": {"max_output_tokens": 9, "response_json_schema": {"snake_key": {"a_b": 1}}}}
    norm = camel_keys(body)
    out = to_chat_request(norm, "m", stream=False)
    assert out["messages"][0] == {"role": "system", "content": "S"}
    assert out["messages"][1]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]
    assert out["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"snake_arg":1}'
    assert out["tools"][0]["function"]["parameters"] == {
        "type": "object", "properties": {"snake_prop": {"type": "string", "maxLength": 3}}}
    assert out["max_tokens"] == 9
    assert out["response_format"]["json_schema"]["schema"] == {"snake_key": {"a_b": 1}}


def test_prompt_tokens_of_gemini_bodies_count_text_not_image_bytes() -> None:
    from relay.tokens import IMAGE_TOKENS, count_text, prompt_tokens

    image = {"inlineData": {"mimeType": "image/png", "data": "A" * 400_000}}
    body = {"contents": [{"role": "user", "parts": [{"text": "Describe this picture"}, image]}]}
    n = prompt_tokens("gemini/generateContent", body)
    assert count_text("Describe this picture", "") + IMAGE_TOKENS <= n < count_text("Describe this picture", "") + IMAGE_TOKENS + 10
    embed = prompt_tokens("gemini/batchEmbedContents", {"requests": [{"content": {"parts": [{"text": "a b c"}]}}] * 2})
    assert embed < 20 and embed >= 2 * count_text("a b c", "")


def test_chat_stream_done_without_finish_reason_is_a_clean_end() -> None:
    h = _openai_stream()
    out = h.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n')
    assert h.done and _events(out)[-1]["candidates"][0]["finishReason"] == "STOP"
