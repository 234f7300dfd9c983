"""/v1/messages adapters: native passthrough to Anthropic, and the translation over OpenAI chat/completions."""

from __future__ import annotations

from typing import Any

import orjson

from relay.adapters import adapter_for
from relay.adapters.anthropic_native import AnthropicNative, AnthropicPassthrough
from relay.adapters.messages_openai import MessagesOverChat, MessagesStream, from_openai_completion, to_openai_chat
from relay.errors import stream_error_event
from relay.sse import SSEParser
from relay.types import KeyRecord, RelayRequest, Target

KEY = KeyRecord("k", "k", "h", "sk-test")


def _req(body: dict[str, Any], **kw: Any) -> RelayRequest:
    return RelayRequest(id="r", endpoint="messages", model=body["model"], body=orjson.dumps(body), json=body,
                        stream=body.get("stream") is True, wants_usage=True, key=KEY, started=0.0,
                        dialect="anthropic", **kw)


def _target(kind: str, model: str = "up-model") -> Target:
    return Target("ch", kind, "https://up.example/v1", 0, "secret", model)


def test_adapter_selection_by_dialect() -> None:
    assert isinstance(adapter_for("anthropic", "messages"), AnthropicNative)
    assert isinstance(adapter_for("openai", "messages"), MessagesOverChat)
    assert not isinstance(adapter_for("anthropic"), AnthropicNative)


def test_native_request_keeps_body_but_model() -> None:
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    req = _req(body, headers={"anthropic-beta": "b1"})
    same = AnthropicNative().build_request(req, _target("anthropic", "claude"))
    assert same.body is req.body and same.url == "https://up.example/v1/messages"
    assert same.headers["anthropic-version"] == "2023-06-01" and same.headers["anthropic-beta"] == "b1"
    mapped = AnthropicNative().build_request(req, _target("anthropic"))
    assert orjson.loads(mapped.body) == {**body, "model": "up-model"}  # type: ignore[arg-type]


def test_native_stream_usage_and_done_at_any_split() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7,'
        b'"cache_read_input_tokens":3,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":4}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    for cut in range(len(stream) + 1):
        h = AnthropicPassthrough("claude")
        out = h.feed(stream[:cut]) + h.feed(stream[cut:]) + h.close()
        assert out == stream and h.done
        assert h.usage is not None and (h.usage.prompt_tokens, h.usage.completion_tokens) == (10, 4)
        assert h.usage.cached_tokens == 3
        assert h.completion.tokens("claude") > 0


def test_anthropic_stream_error_event() -> None:
    ev = stream_error_event("boom", dialect="anthropic")
    assert ev.startswith(b"event: error\ndata: ")
    assert orjson.loads(ev.split(b"data: ", 1)[1]) == {"type": "error", "error": {"type": "api_error", "message": "boom"}}


def test_request_mapping() -> None:
    body = {
        "model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
        "stop_sequences": ["END"], "temperature": 0.5, "metadata": {"user_id": "u1"},
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Calling."},
                                              {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                                         {"type": "text", "text": "Thanks"}]},
        ],
        "stream": True,
    }
    out = to_openai_chat(body, "up", True)
    assert out["model"] == "up" and out["max_tokens"] == 50 and out["stop"] == ["END"] and out["user"] == "u1"
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"}}]
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "42"},
        {"role": "user", "content": "Thanks"},
    ]
    assert to_openai_chat({**body, "tool_choice": {"type": "tool", "name": "f"}}, "up", False)["tool_choice"] == {
        "type": "function", "function": {"name": "f"}}


def test_response_mapping() -> None:
    completion = {
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":2}'}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}},
    }
    msg, usage = from_openai_completion(completion, "pub")
    assert msg["type"] == "message" and msg["model"] == "pub" and msg["stop_reason"] == "tool_use"
    assert msg["content"] == [{"type": "text", "text": "Checking."},
                              {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 2}}]
    assert msg["usage"] == {"input_tokens": 6, "output_tokens": 5, "cache_read_input_tokens": 4}
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.source) == (10, 5, "upstream")
    length = {**completion, "choices": [{"finish_reason": "length", "message": {"content": "ab"}}]}
    assert from_openai_completion(length, "pub")[0]["stop_reason"] == "max_tokens"


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    obj: dict[str, Any] = {"id": "chatcmpl-9", "object": "chat.completion.chunk",
                           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


OPENAI_STREAM = b"".join([
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hel"}),
    _chunk({"content": "lo \u00e9"}),
    _chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "2}"}}]}),
    _chunk({}, "tool_calls"),
    _chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 3}),
    b"data: [DONE]\n\n",
])


def _events(data: bytes) -> list[tuple[str, Any]]:
    p = SSEParser()
    return [(e.event, orjson.loads(e.data)) for e in p.feed(data)]


def test_stream_translation_sequence() -> None:
    h = MessagesStream("pub", message_id="msg_x")
    events = _events(h.feed(OPENAI_STREAM) + h.close())
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert "".join(d["delta"]["text"] for n, d in events if d.get("delta", {}).get("type") == "text_delta") == "Hello \u00e9"
    assert events[5][1] == {"type": "content_block_start", "index": 1,
                            "content_block": {"type": "tool_use", "id": "c1", "name": "f", "input": {}}}
    assert "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1) == '{"x":2}'
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 9, "output_tokens": 3}}
    assert h.done and h.usage is not None and h.usage.total_tokens == 12


def test_stream_translation_split_at_every_offset() -> None:
    whole = MessagesStream("pub", message_id="msg_x")
    expected = whole.feed(OPENAI_STREAM) + whole.close()
    for cut in range(len(OPENAI_STREAM) + 1):
        h = MessagesStream("pub", message_id="msg_x")
        got = h.feed(OPENAI_STREAM[:cut]) + h.feed(OPENAI_STREAM[cut:]) + h.close()
        assert got == expected, cut
        assert h.done


def test_stream_without_done_still_ends_with_message_stop() -> None:
    h = MessagesStream("pub")
    data = _chunk({"content": "Hi"}) + _chunk({}, "length")
    events = _events(h.feed(data) + h.close())
    assert events[-1][0] == "message_stop" and events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert h.done


def test_upstream_error_rewritten_in_anthropic_shape() -> None:
    body = orjson.dumps({"error": {"message": "bad thing", "type": "invalid_request_error", "param": None, "code": None}})
    failure = MessagesOverChat(adapter_for("openai")).parse_error(400, {}, body)
    assert failure.kind == "client" and failure.status == 400
    assert orjson.loads(failure.body) == {"type": "error", "error": {"type": "invalid_request_error", "message": "bad thing"}}
