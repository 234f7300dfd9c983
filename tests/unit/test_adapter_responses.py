"""/v1/responses over chat/completions: request translation, answers, streams, and the openai SDK reading them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from relay.adapters.anthropic import AnthropicAdapter
from relay.adapters.azure import AzureAdapter
from relay.adapters.gemini import GeminiAdapter
from relay.adapters.openai import OpenAIAdapter
from relay.adapters.responses_chat import (
    ResponsesOverChat,
    ResponsesStream,
    from_chat_completion,
    response_id_of,
    to_chat_request,
)
from relay.errors import InvalidRequest
from relay.sse import SSEParser
from relay.types import KeyRecord, RelayRequest, Target

DATA = Path(__file__).resolve().parents[1] / "data"
KEY = KeyRecord("k", "k", "h", "sk-test")
EVENT = TypeAdapter(ResponseStreamEvent)
RID = "resp_" + "ab" * 24


def _req(body: dict[str, Any]) -> RelayRequest:
    return RelayRequest(id="r1", endpoint="responses", model=body["model"], body=orjson.dumps(body), json=body,
                        stream=body.get("stream") is True, wants_usage=False, key=KEY, started=0.0)


def _target(kind: str, model: str = "up-model") -> Target:
    return Target("ch", kind, "https://up.example/v1", 0, "secret", model)


# -- request translation ----------------------------------------------------------------------------------

FN = {"type": "function", "name": "get_weather", "description": "Weather now",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": True}
CHAT_FN = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": FN["parameters"], "strict": True}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("string input", {"input": "Hi"}, {"messages": [{"role": "user", "content": "Hi"}]}),
    ("instructions lead", {"instructions": "Be brief.", "input": "Hi"},
     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
    ("roles and text parts", {"input": [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Sys."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Hel"}, {"type": "input_text", "text": "lo"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Hey", "annotations": []}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
    ]}, {"messages": [{"role": "system", "content": "Rules."}, {"role": "system", "content": "Sys."},
                      {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hey"},
                      {"role": "assistant", "content": "No."}]}),
    ("image by url", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA==", "detail": "low"}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "What is this?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==", "detail": "low"}}]}]}),
    ("function calls merge into the turn", {"input": [
        {"role": "user", "content": "Weather?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "25C"}]},
        {"type": "function_call", "call_id": "call_3", "name": "get_weather", "arguments": "{}"},
    ]}, {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            CALL, {"id": "call_2", "type": "function",
                   "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "25C"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}]}),
    ("reasoning items dropped", {"input": [
        {"role": "user", "content": "Hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA..."},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
    ]}, {"messages": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": None, "tool_calls": [CALL]}]}),
    ("tools and choices", {"input": "Hi", "tools": [FN], "tool_choice": {"type": "function", "name": "get_weather"},
                           "parallel_tool_calls": False},
     {"tools": [CHAT_FN], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
      "parallel_tool_calls": False}),
    ("tool_choice required", {"input": "Hi", "tools": [FN], "tool_choice": "required"},
     {"tool_choice": "required"}),
    ("no tools: no tool_choice", {"input": "Hi", "tool_choice": "auto", "parallel_tool_calls": True},
     {"messages": [{"role": "user", "content": "Hi"}]}),
    ("json schema", {"input": "Hi", "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                                                         "schema": {"type": "object"}}, "verbosity": "low"}},
     {"response_format": {"type": "json_schema",
                          "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}}}),
    ("json object", {"input": "Hi", "text": {"format": {"type": "json_object"}}},
     {"response_format": {"type": "json_object"}}),
    ("plain text format", {"input": "Hi", "text": {"format": {"type": "text"}}},
     {"messages": [{"role": "user", "content": "Hi"}]}),
    ("sampling and limits", {"input": "Hi", "max_output_tokens": 64, "temperature": 0.2, "top_p": 0.9,
                             "reasoning": {"effort": "low", "summary": "auto"}, "safety_identifier": "u-1",
                             "prompt_cache_key": "pk", "metadata": {"a": "b"}, "store": False,
                             "truncation": "auto", "include": ["reasoning.encrypted_content"]},
     {"max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "reasoning_effort": "low", "user": "u-1",
      "prompt_cache_key": "pk"}),
]


@pytest.mark.parametrize("body,expect", [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS])
def test_request_translation(body: dict[str, Any], expect: dict[str, Any]) -> None:
    out = to_chat_request({"model": "pub", **body}, "pub", False)
    assert out["model"] == "pub" and "stream" not in out
    for name, value in expect.items():
        assert out[name] == value, name
    for name in ("metadata", "store", "include", "truncation", "max_completion_tokens", "text", "input"):
        assert name not in out
    if "tools" not in body:
        assert "tool_choice" not in out and "parallel_tool_calls" not in out


def test_stream_request_asks_for_usage() -> None:
    out = to_chat_request({"input": "Hi", "stream": True}, "m", True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id", "keeps no conversation state"),
    ({"input": "Hi", "store": True}, "store", "'store': false"),
    ({"input": "Hi", "conversation": "conv_1"}, "conversation", "whole conversation"),
    ({"input": "Hi", "background": True}, "background", "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0", "whole conversation"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input.0.content.0", "file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     "input.0.content.0", "input_file"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role", "developer"),
    ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input.0", "computer_call_output"),
    ({"input": "Hi", "tools": [FN, {"type": "web_search"}]}, "tools.1.type", "web_search"),
    ({"input": "Hi", "tools": [{"type": "mcp", "server_label": "x"}]}, "tools.0.type", "mcp"),
    ({"input": "Hi", "tools": [{"type": "custom", "name": "x"}]}, "tools.0.type", "custom"),
    ({"input": "Hi", "tools": [FN], "tool_choice": {"type": "file_search"}}, "tool_choice", "file_search"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "schema"),
    ({"input": "Hi", "instructions": [{"role": "system", "content": "x"}]}, "instructions", "string"),
    ({"input": []}, "input", "required"),
    ({}, "input", "input"),
]


@pytest.mark.parametrize("body,param,words", REFUSED)
def test_request_refusals_name_the_field(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_chat_request(body, "m", False)
    assert info.value.status == 400 and info.value.param == param
    assert words in info.value.message


def test_codex_shaped_request() -> None:
    body = {
        "model": "gpt-5-codex", "instructions": "You are Codex.", "store": False, "stream": True,
        "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "medium", "summary": "auto"},
        "tool_choice": "auto", "parallel_tool_calls": False, "prompt_cache_key": "sess-1",
        "tools": [{"type": "function", "name": "shell", "description": "Runs a command", "strict": False,
                   "parameters": {"type": "object", "properties": {"command": {"type": "array"}}}}],
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<env>...</env>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Listing."}],
             "content": None, "encrypted_content": "gAAAAABo..."},
            {"type": "function_call", "name": "shell", "arguments": '{"command":["ls"]}', "call_id": "call_ls"},
            {"type": "function_call_output", "call_id": "call_ls", "output": "README.md\nsetup.cfg"},
        ],
    }
    chat = ResponsesOverChat(OpenAIAdapter()).build_request(_req(body), _target("openai", "deepseek-chat"))
    assert chat.url == "https://up.example/v1/chat/completions"
    out = orjson.loads(chat.body)  # type: ignore[arg-type]
    assert out["model"] == "deepseek-chat" and out["stream"] is True
    assert out["stream_options"] == {"include_usage": True} and out["reasoning_effort"] == "medium"
    assert out["messages"] == [
        {"role": "system", "content": "You are Codex."},
        {"role": "system", "content": "<env>...</env>"},
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_ls", "type": "function", "function": {"name": "shell", "arguments": '{"command":["ls"]}'}}]},
        {"role": "tool", "tool_call_id": "call_ls", "content": "README.md\nsetup.cfg"},
    ]
    assert out["tools"][0]["function"]["name"] == "shell" and out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False and out["prompt_cache_key"] == "sess-1"


# -- non-stream answers -----------------------------------------------------------------------------------


def _completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1754500000, "model": "up-model",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


REQUEST = {"model": "pub", "input": "Hi", "instructions": "Be brief.", "tools": [FN], "temperature": 0.3,
           "metadata": {"trace": "t1"}, "max_output_tokens": 100, "text": {"format": {"type": "text"}}}


def _validated(obj: dict[str, Any]) -> Response:
    parsed = Response.model_validate(obj)
    assert "output_text" not in obj
    return parsed


def test_text_answer() -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38,
             "prompt_tokens_details": {"cached_tokens": 20}, "completion_tokens_details": {"reasoning_tokens": 3}}
    out, u = from_chat_completion(_completion({"content": "Hello!"}, usage=usage), REQUEST, RID)
    r = _validated(out)
    assert r.id == RID and r.object == "response" and r.status == "completed" and r.model == "pub"
    assert r.output_text == "Hello!" and r.incomplete_details is None
    msg = out["output"][0]
    assert msg["type"] == "message" and msg["id"].startswith("msg_") and msg["role"] == "assistant"
    assert msg["status"] == "completed"
    assert msg["content"] == [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]
    assert out["usage"] == {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 0},
                            "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 38}
    assert u is not None and (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.source) == (30, 8, 20, "upstream")
    assert out["instructions"] == "Be brief." and out["metadata"] == {"trace": "t1"} and out["temperature"] == 0.3
    assert out["max_output_tokens"] == 100 and out["tool_choice"] == "auto" and out["parallel_tool_calls"] is True
    assert out["tools"][0]["name"] == "get_weather" and out["store"] is False
    assert response_id_of(orjson.dumps(out)) == RID


def test_structured_answer_echoes_a_valid_format() -> None:
    body = {**REQUEST, "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}
    assert to_chat_request(body, "pub", False)["response_format"]["json_schema"]["name"] == "response"
    out, _ = from_chat_completion(_completion({"content": '{"a": 1}'}), body, RID)
    assert _validated(out).text.format.type == "json_schema"  # type: ignore[union-attr]
    assert out["text"]["format"]["name"] == "response"


def test_tool_call_answer() -> None:
    out, _ = from_chat_completion(_completion({"content": None, "tool_calls": [CALL]}, "tool_calls"), REQUEST, RID)
    r = _validated(out)
    assert r.status == "completed" and len(out["output"]) == 1
    call = out["output"][0]
    assert call["type"] == "function_call" and call["id"].startswith("fc_") and call["call_id"] == "call_1"
    assert call["name"] == "get_weather" and call["arguments"] == '{"city":"Paris"}' and call["status"] == "completed"


def test_length_refusal_and_reasoning_answers() -> None:
    out, _ = from_chat_completion(_completion({"content": "Once upon"}, "length"), REQUEST, RID)
    r = _validated(out)
    assert r.status == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["output"][0]["status"] == "incomplete"
    out, _ = from_chat_completion(_completion({"content": None, "refusal": "I can't help with that."}), REQUEST, RID)
    _validated(out)
    assert out["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]
    out, _ = from_chat_completion(_completion({"content": "42", "reasoning_content": "6 times 7."}), REQUEST, RID)
    r = _validated(out)
    assert [i["type"] for i in out["output"]] == ["reasoning", "message"]
    assert out["output"][0]["summary"] == [{"type": "summary_text", "text": "6 times 7."}]
    assert out["output"][0]["id"].startswith("rs_") and r.output_text == "42"


def test_adapter_parse_response_over_openai() -> None:
    adapter = ResponsesOverChat(OpenAIAdapter())
    body, usage = adapter.parse_response(_req(REQUEST), 200, orjson.dumps(_completion({"content": "Hi"})))
    r = _validated(orjson.loads(body))
    assert r.output_text == "Hi" and usage is not None and usage.prompt_tokens == 10
    rid = response_id_of(body)
    assert rid is not None and rid.startswith("resp_") and len(rid) == 5 + 48


# -- streams ----------------------------------------------------------------------------------------------


def _events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Every event, checked: the SDK's event union parses it, its name is its type, sequence numbers count."""
    out = []
    for i, ev in enumerate(SSEParser().feed(data)):
        obj = orjson.loads(ev.data)
        EVENT.validate_python(obj)
        assert ev.event == obj["type"] and obj["sequence_number"] == i
        out.append((ev.event, obj))
    assert b"[DONE]" not in data
    return out


def _run(handler: Any, stream: bytes, cut: int | None = None) -> bytes:
    if cut is None:
        return bytes(handler.feed(stream) + handler.close())
    return bytes(handler.feed(stream[:cut]) + handler.feed(stream[cut:]) + handler.close())


def _final(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    kind, obj = events[-1]
    assert kind in ("response.completed", "response.incomplete")
    _validated(obj["response"])
    return obj["response"]  # type: ignore[no-any-return]


STREAM_BODY = {"model": "pub", "input": "Hi", "tools": [FN], "stream": True}


@pytest.mark.parametrize("name", ["chat_stream_text.sse", "chat_stream_tools.sse", "chat_stream_reasoning.sse"])
def test_stream_at_every_split(name: str) -> None:
    stream = (DATA / name).read_bytes()
    whole = _run(ResponsesStream(STREAM_BODY, "pub", RID), stream)
    for cut in range(len(stream) + 1):
        h = ResponsesStream(STREAM_BODY, "pub", RID)
        assert _strip_ids(_run(h, stream, cut)) == _strip_ids(whole), cut
        assert h.done and h.usage is not None
    _final(_events(whole))


def test_text_stream_events() -> None:
    h = ResponsesStream(STREAM_BODY, "pub", RID)
    events = _events(_run(h, (DATA / "chat_stream_text.sse").read_bytes()))
    kinds = [k for k, _ in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []
    text = "Hello there, caf\u00e9 \"quoted\"\nline two \U0001F600."
    deltas = [o for k, o in events if k == "response.output_text.delta"]
    assert "".join(d["delta"] for d in deltas) == text
    assert {(d["output_index"], d["content_index"], d["item_id"]) for d in deltas} == {(0, 0, events[2][1]["item"]["id"])}
    done = dict(events)["response.output_text.done"]
    assert done["text"] == text
    final = _final(events)
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["input_tokens"] == 19 and final["usage"]["output_tokens"] == 11
    assert h.usage is not None and (h.usage.prompt_tokens, h.usage.completion_tokens) == (19, 11)
    assert h.completion.tokens("gpt-4o") > 0 and h.id == RID and final["id"] == RID and h.response_id is None


def test_tool_stream_events() -> None:
    h = ResponsesStream(STREAM_BODY, "pub", RID)
    events = _events(_run(h, (DATA / "chat_stream_tools.sse").read_bytes()))
    added = [o for k, o in events if k == "response.output_item.added"]
    assert [a["item"]["type"] for a in added] == ["message", "function_call", "function_call"]
    assert added[1]["item"]["arguments"] == "" and added[1]["item"]["call_id"] == "call_Paris0001"
    deltas = [o for k, o in events if k == "response.function_call_arguments.delta"]
    assert "".join(d["delta"] for d in deltas if d["output_index"] == 1) == '{"location": "Paris", "unit": "c"}'
    done = [o for k, o in events if k == "response.function_call_arguments.done"]
    assert [orjson.loads(d["arguments"]) for d in done] == [
        {"location": "Paris", "unit": "c"}, {"location": "S\u00e3o Paulo", "note": "line\nbreak"}]
    final = _final(events)
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    assert final["output"][2]["call_id"] == "call_SaoPaulo02" and final["output"][2]["status"] == "completed"
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 64
    assert h.usage is not None and h.usage.cached_tokens == 64


def test_reasoning_stream_events() -> None:
    events = _events(_run(ResponsesStream(STREAM_BODY, "pub", RID), (DATA / "chat_stream_reasoning.sse").read_bytes()))
    summary = [o["delta"] for k, o in events if k == "response.reasoning_summary_text.delta"]
    assert "".join(summary) == "The user greets me. I should answer briefly."
    final = _final(events)
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"][0]["text"] == "The user greets me. I should answer briefly."
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 17
    assert Response.model_validate(final).output_text == "Hi! How can I help?"


def _chunk(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
    obj = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_length_stream_is_incomplete() -> None:
    h = ResponsesStream(STREAM_BODY, "pub", RID)
    events = _events(_run(h, _chunk({"content": "Once"}) + _chunk({}, "length") + b"data: [DONE]\n\n"))
    final = _final(events)
    assert events[-1][0] == "response.incomplete" and final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"} and final["output"][0]["status"] == "incomplete"
    assert h.done and h.usage is None  # no usage chunk: the caller counts h.completion


def test_refusal_stream() -> None:
    events = _events(_run(ResponsesStream(STREAM_BODY, "pub", RID),
                          _chunk({"refusal": "I can't"}) + _chunk({"refusal": " help."}) + _chunk({}, "stop")))
    assert "response.refusal.delta" in dict(events) and dict(events)["response.refusal.done"]["refusal"] == "I can't help."
    assert _final(events)["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]


def test_upstream_error_event_and_cut_stream() -> None:
    h = ResponsesStream(STREAM_BODY, "pub", RID)
    err = b'data: {"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}\n\n'
    events = _events(_run(h, _chunk({"content": "Hi"}) + err + _chunk({"content": "late"}) + _chunk({}, "stop")))
    assert events[-1][0] == "error" and events[-1][1]["code"] == "overloaded"
    assert events[-1][1]["error"] == {"type": "server_error", "code": "overloaded", "message": "overloaded", "param": None}
    assert not h.done and h.error_frame("cut", "upstream_error") == b""  # one terminal event per stream

    cut = ResponsesStream(STREAM_BODY, "pub", RID)
    out = _run(cut, _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "Hal"}))
    assert not cut.done
    events = _events(out + cut.error_frame("The upstream stream ended before it finished.", "upstream_error"))
    assert events[-1][0] == "error" and events[-1][1]["message"].startswith("The upstream stream ended")


# -- the openai SDK reading what the relay sends ---------------------------------------------------------------


class _Relay:
    """A local HTTP server answering every request with the bytes the translator produced."""

    def __init__(self, aiohttp_server: Any) -> None:
        self._start = aiohttp_server
        self.body, self.content_type = b"", "text/event-stream"

    async def client(self, body: bytes, content_type: str = "text/event-stream") -> openai.AsyncOpenAI:
        self.body, self.content_type = body, content_type

        async def reply(request: web.Request) -> web.Response:
            return web.Response(body=self.body, headers={"Content-Type": self.content_type})

        app = web.Application()
        app.router.add_post("/v1/responses", reply)
        server = await self._start(app)
        return openai.AsyncOpenAI(api_key="sk-test", base_url=str(server.make_url("/v1")), max_retries=0, timeout=10)


@pytest.fixture
def relay(aiohttp_server: Any) -> _Relay:
    return _Relay(aiohttp_server)


async def test_sdk_streams_to_a_final_response(relay: _Relay) -> None:
    data = _run(ResponsesStream(STREAM_BODY, "pub", RID), (DATA / "chat_stream_tools.sse").read_bytes())
    client = await relay.client(data)
    async with client.responses.stream(model="pub", input="Hi") as stream:
        final = await stream.get_final_response()
    assert final.id == RID and final.output_text == "Checking both cities."
    calls = [i for i in final.output if i.type == "function_call"]
    assert [c.call_id for c in calls] == ["call_Paris0001", "call_SaoPaulo02"]
    assert final.usage is not None and final.usage.total_tokens == 136
    await client.close()


async def test_sdk_raises_on_error_frame(relay: _Relay) -> None:
    h = ResponsesStream(STREAM_BODY, "pub", RID)
    data = _run(h, _chunk({"content": "Hal"})) + h.error_frame("The upstream stream broke off.", "upstream_error")
    client = await relay.client(data)
    seen = []
    with pytest.raises(openai.APIError, match="broke off"):
        async for event in await client.responses.create(model="pub", input="Hi", stream=True):
            seen.append(event.type)
    assert seen[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    await client.close()


async def test_sdk_reads_a_whole_response(relay: _Relay) -> None:
    body, _ = ResponsesOverChat(OpenAIAdapter()).parse_response(_req(REQUEST), 200, orjson.dumps(
        _completion({"content": "Hello", "tool_calls": [CALL]}, "tool_calls")))
    client = await relay.client(body, "application/json")
    r = await client.responses.create(model="pub", input="Hi")
    assert r.output_text == "Hello" and r.output[1].type == "function_call"
    await client.close()


# -- composed with the anthropic and gemini chat adapters -----------------------------------------------------


def _composed(adapter: ResponsesOverChat, body: dict[str, Any], stream: bytes) -> tuple[list[Any], Any]:
    """The whole path at every split: the same events each time (but for ids), ending cleanly."""
    req = _req(body)
    whole = _run(adapter.stream_handler(req), stream)
    for cut in range(len(stream) + 1):
        h = adapter.stream_handler(req)
        got = _run(h, stream, cut)
        assert h.done, cut
        assert _strip_ids(got) == _strip_ids(whole), cut
    h = adapter.stream_handler(req)
    events = _events(_run(h, stream))
    return events, h


def _strip_ids(data: bytes) -> bytes:
    """The stream with its per-stream parts (the random id, created_at and completed_at) taken out."""
    return re.sub(rb'[0-9a-f]{48}|"(?:created|completed)_at":\d+', b"", data)


def test_over_anthropic_stream() -> None:
    adapter = ResponsesOverChat(AnthropicAdapter())
    body = {"model": "claude", "input": "Weather in Paris and São Paulo?", "tools": [FN], "stream": True}
    up = adapter.build_request(_req(body), _target("anthropic", "claude-sonnet-4-5"))
    sent = orjson.loads(up.body)  # type: ignore[arg-type]
    assert up.url == "https://up.example/v1/messages" and sent["stream"] is True
    assert sent["tools"][0]["name"] == "get_weather" and sent["messages"][0]["role"] == "user"
    events, h = _composed(adapter, body, (DATA / "anthropic_tools.sse").read_bytes())
    final = _final(events)
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    assert Response.model_validate(final).output_text == "Let me check the weather in both cities."
    assert orjson.loads(final["output"][2]["arguments"]) == {"location": "Paris", "unit": "f"}
    assert final["output"][1]["call_id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert final["usage"]["input_tokens"] == 472 and final["usage"]["output_tokens"] == 89
    assert h.usage is not None and h.usage.prompt_tokens == 472 and h.completion.tokens("claude") > 0


def test_over_gemini_stream() -> None:
    adapter = ResponsesOverChat(GeminiAdapter())
    body = {"model": "gemini", "input": "Weather?", "tools": [FN], "stream": True}
    up = adapter.build_request(_req(body), _target("gemini", "gemini-2.5-flash"))
    assert up.url.endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    events, _h = _composed(adapter, body, (DATA / "gemini_stream_tools.sse").read_bytes())
    final = _final(events)
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    assert orjson.loads(final["output"][2]["arguments"])["note"] == "line\nbreak"
    assert final["status"] == "completed" and final["usage"]["total_tokens"] == 90
    text_events, _ = _composed(adapter, {**body, "tools": []}, (DATA / "gemini_stream_text.sse").read_bytes())
    assert Response.model_validate(_final(text_events)).output_text.startswith("The capital of France is **Paris**")


def test_over_anthropic_and_gemini_whole_answers() -> None:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "max_tokens",
           "content": [{"type": "text", "text": "Partial"}], "usage": {"input_tokens": 7, "output_tokens": 3}}
    body, usage = ResponsesOverChat(AnthropicAdapter()).parse_response(_req(REQUEST), 200, orjson.dumps(msg))
    r = _validated(orjson.loads(body))
    assert r.status == "incomplete" and r.output_text == "Partial" and usage is not None and usage.prompt_tokens == 7
    gem = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Bonjour"}]}, "finishReason": "STOP"}],
           "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}}
    body, usage = ResponsesOverChat(GeminiAdapter()).parse_response(_req(REQUEST), 200, orjson.dumps(gem))
    r = _validated(orjson.loads(body))
    assert r.output_text == "Bonjour" and r.usage is not None and r.usage.total_tokens == 6


def test_over_azure_goes_to_the_deployments_chat_url() -> None:
    target = Target("az", "azure", "https://res.openai.azure.com", 0, "secret", "my-deployment",
                    api_version="2024-10-21")
    up = ResponsesOverChat(AzureAdapter()).build_request(_req({"model": "gpt-4o", "input": "Hi"}), target)
    assert up.url == ("https://res.openai.azure.com/openai/deployments/my-deployment/chat/completions"
                      "?api-version=2024-10-21")
    assert orjson.loads(up.body)["messages"] == [{"role": "user", "content": "Hi"}]  # type: ignore[arg-type]


def test_errors_stay_the_inner_adapters() -> None:
    gem = b'{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}'
    failure = ResponsesOverChat(GeminiAdapter()).parse_error(400, {}, gem)
    assert failure.kind == "auth" and orjson.loads(failure.body)["error"]["message"] == "API key not valid"
    with pytest.raises(InvalidRequest):
        ResponsesOverChat(OpenAIAdapter()).build_request(_req({"model": "m", "input": "Hi", "store": True}),
                                                         _target("openai"))
