"""Reasoning and prompt caching across translations, direction by direction: OpenAI chat -> Anthropic (and
back), the reasoning table from config, and cache-aware billing. No sockets; the recorded thinking stream is
replayed split at every byte offset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.adapters.anthropic import AnthropicAdapter, AnthropicStream, from_anthropic_message, from_anthropic_usage
from relay.adapters.gemini import GeminiAdapter, GeminiStream
from relay.adapters.messages_openai import MessagesStream, from_openai_completion, to_anthropic_usage, to_openai_chat
from relay.adapters.openai import usage_from_openai
from relay.adapters.responses_output import responses_usage, usage_from_chat
from relay.adapters.thinking import openai_effort
from relay.billing import Pricing
from relay.config import BillingConfig, ConfigError, PriceConfig, parse_config
from relay.errors import InvalidRequest
from relay.sse import SSEParser
from relay.types import KeyRecord, ModelReasoning, ReasoningTable, RelayRequest, Target, Usage

DATA = Path(__file__).resolve().parent.parent / "data"
KEY = KeyRecord("key_1", "test", "hash", "sk-test")
EPH = {"type": "ephemeral"}
SIG = "ErUBCkYIBxgCIkB0pL9kcW0vFzjNaxkr8Q3eYb2p+gG1vHQfB1mI3Yd2c4sTqZ5kLw8oJ2hV9nR1xUaE7yBd6fS3tM0pQ=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


def _req(body: dict[str, Any], stream: bool = False) -> RelayRequest:
    body = {"model": "claude", **body}
    return RelayRequest(id="r1", endpoint="chat/completions", model="claude", body=orjson.dumps(body), json=body,
                        stream=stream, wants_usage=True, key=KEY, started=0.0)


def _anthropic(body: dict[str, Any], model: str = "claude-sonnet-4-5", table: ReasoningTable | None = None) -> Any:
    target = Target("c", "anthropic", "https://api.anthropic.com", 0, "ak", model, reasoning=table or ReasoningTable())
    up = AnthropicAdapter().build_request(_req({"messages": [{"role": "user", "content": "Hi"}], **body}), target)
    assert isinstance(up.body, bytes)
    return orjson.loads(up.body)


# -- OpenAI chat -> Anthropic: reasoning -------------------------------------------------------------------


@pytest.mark.parametrize("body, model, expect", [
    ({"reasoning_effort": "minimal"}, "claude-sonnet-4-5", {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 4096}),
    ({"reasoning_effort": "low"}, "claude-sonnet-4-5", {"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 4096}),
    ({"reasoning_effort": "medium"}, "claude-sonnet-4-5", {"thinking": {"type": "enabled", "budget_tokens": 8192}, "max_tokens": 8192 + 4096}),
    ({"reasoning_effort": "high", "max_tokens": 2000}, "claude-sonnet-4-5", {"thinking": {"type": "enabled", "budget_tokens": 24576}, "max_tokens": 26576}),
    ({"reasoning_effort": "high", "max_completion_tokens": 30000}, "claude-sonnet-4-5", {"thinking": {"type": "enabled", "budget_tokens": 24576}, "max_tokens": 30000}),
    ({"reasoning_effort": "high"}, "claude-opus-4-7", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}, "max_tokens": 4096}),
    ({"reasoning_effort": "minimal"}, "claude-sonnet-4-6-20260101", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}),
    ({"reasoning_effort": "none"}, "claude-sonnet-4-5", {"thinking": None, "max_tokens": 4096}),
    ({"thinking": {"type": "enabled", "budget_tokens": 5000}, "reasoning_effort": "low"}, "claude-sonnet-4-5",
     {"thinking": {"type": "enabled", "budget_tokens": 5000}, "max_tokens": 9096}),  # the client's own thinking wins
    ({}, "claude-sonnet-4-5", {"thinking": None, "max_tokens": 4096}),
])
def test_effort_to_claude_thinking(body: dict[str, Any], model: str, expect: dict[str, Any]) -> None:
    sent = _anthropic(body, model)
    for key, value in expect.items():
        assert sent.get(key) == value, key


def test_thinking_drops_sampling_and_forced_tools() -> None:
    sent = _anthropic({"reasoning_effort": "low", "temperature": 0.3, "top_p": 0.5, "tools": [WEATHER],
                       "tool_choice": "required", "parallel_tool_calls": False})
    assert "temperature" not in sent and "top_p" not in sent
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    plain = _anthropic({"temperature": 0.3, "tools": [WEATHER], "tool_choice": "required"})
    assert plain["temperature"] == 0.3 and plain["tool_choice"] == {"type": "any"}


def test_budgets_from_the_config_table() -> None:
    cfg = parse_config({"reasoning": {"budgets": {"high": 16000},
                                      "models": {"claude-3-7*": {"budgets": {"high": 12000}}, "my-claude": {"style": "adaptive"}}}}, {})
    table = cfg.reasoning
    assert _anthropic({"reasoning_effort": "high"}, "claude-sonnet-4-5", table)["thinking"]["budget_tokens"] == 16000
    assert _anthropic({"reasoning_effort": "high"}, "claude-3-7-sonnet-latest", table)["thinking"]["budget_tokens"] == 12000
    assert _anthropic({"reasoning_effort": "high"}, "my-claude", table)["thinking"] == {"type": "adaptive"}
    assert table.for_model("claude-opus-4-7").style == "adaptive"  # the built-in entries still apply
    with pytest.raises(ConfigError, match=r"reasoning.models.x.style"):
        parse_config({"reasoning": {"models": {"x": {"style": "loud"}}}}, {})


def test_unknown_effort_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="reasoning_effort"):
        _anthropic({"reasoning_effort": "extreme"})


def test_thinking_blocks_sent_back_go_first_in_their_turn() -> None:
    assistant = {"role": "assistant", "content": "Let me check.", "reasoning_content": "hmm",
                 "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": SIG},
                                     {"type": "redacted_thinking", "data": REDACTED}],
                 "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    sent = _anthropic({"reasoning_effort": "low", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather?"}, assistant, {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}]})
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": SIG}, {"type": "redacted_thinking", "data": REDACTED},
        {"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]


# -- OpenAI chat -> Anthropic: cache_control ---------------------------------------------------------------


@pytest.mark.parametrize("messages, where, expect", [
    ([{"role": "system", "content": [{"type": "text", "text": "S", "cache_control": EPH}]}, {"role": "user", "content": "Hi"}],
     "system", [{"type": "text", "text": "S", "cache_control": EPH}]),
    ([{"role": "system", "content": "S", "cache_control": EPH}, {"role": "user", "content": "Hi"}],
     "system", [{"type": "text", "text": "S", "cache_control": EPH}]),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}], "system", "S"),
    ([{"role": "user", "content": [{"type": "text", "text": "Doc", "cache_control": EPH}, {"type": "text", "text": "Q"}]}],
     "messages", [{"role": "user", "content": [{"type": "text", "text": "Doc", "cache_control": EPH}, {"type": "text", "text": "Q"}]}]),
    ([{"role": "user", "content": "Doc", "cache_control": EPH}],
     "messages", [{"role": "user", "content": [{"type": "text", "text": "Doc", "cache_control": EPH}]}]),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}, "cache_control": EPH}]}],
     "messages", [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": EPH}]}]),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "R", "cache_control": EPH}]}],
     "messages", [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "R", "cache_control": EPH}]}]),
])
def test_cache_control_carried(messages: list[Any], where: str, expect: Any) -> None:
    assert _anthropic({"messages": messages})[where] == expect


def test_cache_control_on_tools() -> None:
    sent = _anthropic({"tools": [{**WEATHER, "cache_control": EPH}]})
    assert sent["tools"][0]["cache_control"] == EPH


# -- Anthropic -> OpenAI chat ------------------------------------------------------------------------------


def test_message_with_thinking_blocks() -> None:
    msg = {"type": "message", "id": "msg_1", "stop_reason": "tool_use", "content": [
        {"type": "thinking", "thinking": "Let me think. ", "signature": SIG},
        {"type": "redacted_thinking", "data": REDACTED},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 50}}
    out, usage = from_anthropic_message(msg, "claude", None)
    m = out["choices"][0]["message"]
    assert m["content"] == "Checking." and m["reasoning_content"] == "Let me think. "
    assert m["thinking_blocks"] == [{"type": "thinking", "thinking": "Let me think. ", "signature": SIG},
                                    {"type": "redacted_thinking", "data": REDACTED}]
    assert out["usage"]["prompt_tokens"] == 1110 and out["usage"]["prompt_tokens_details"] == {"cached_tokens": 1000}
    assert usage is not None and (usage.cached_tokens, usage.cache_write_tokens) == (1000, 100)


def test_message_without_thinking_has_no_reasoning_fields() -> None:
    out, _ = from_anthropic_message({"type": "message", "content": [{"type": "text", "text": "Hi"}]}, "claude", None)
    assert "reasoning_content" not in out["choices"][0]["message"]


def _run(raw: bytes, pieces: list[int]) -> tuple[bytes, AnthropicStream]:
    h = AnthropicStream("claude", True, None, created=1700000000)
    out, start = b"", 0
    for end in [*pieces, len(raw)]:
        out += h.feed(raw[start:end])
        start = end
    return out + h.close(), h


def test_recorded_thinking_stream_split_at_every_offset() -> None:
    raw = (DATA / "anthropic_thinking.sse").read_bytes()
    whole, h = _run(raw, [])
    assert h.done
    for i in range(len(raw) + 1):
        assert _run(raw, [i])[0] == whole, i
    assert _run(raw, list(range(1, len(raw))))[0] == whole


def test_thinking_stream_deltas() -> None:
    out, h = _run((DATA / "anthropic_thinking.sse").read_bytes(), [])
    frames = [orjson.loads(f.removeprefix(b"data: ")) for f in out.split(b"\n\n")[:-1] if f != b"data: [DONE]"]
    deltas = [f["choices"][0]["delta"] for f in frames if f["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user wants Paris weather. I'll call get_weather — «Paris, FR»."
    blocks = [b for d in deltas for b in d.get("thinking_blocks", ())]
    assert blocks == [
        {"type": "thinking", "thinking": "The user wants Paris weather. "},
        {"type": "thinking", "thinking": "I'll call get_weather — «Paris, FR»."},
        {"type": "thinking", "thinking": "", "signature": SIG},
        {"type": "redacted_thinking", "data": REDACTED}]
    calls = [c for d in deltas for c in d.get("tool_calls", ())]
    assert calls[0]["id"] == "toolu_01A09q90qw90lq917835lq9" and calls[0]["index"] == 0
    assert frames[-1]["usage"]["prompt_tokens"] == 2560 and frames[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 2048}
    assert h.completion.tokens() > 20  # thinking text counts as output when usage is missing


# -- /v1/messages thinking -> OpenAI reasoning_effort ------------------------------------------------------


@pytest.mark.parametrize("thinking, output_config, style, expect", [
    ({"type": "enabled", "budget_tokens": 1024}, None, "effort", "low"),
    ({"type": "enabled", "budget_tokens": 4000}, None, "effort", "medium"),
    ({"type": "enabled", "budget_tokens": 10000}, None, "effort", "high"),
    ({"type": "enabled", "budget_tokens": 100000}, None, "effort", "high"),
    ({"type": "adaptive"}, {"effort": "low"}, "effort", "low"),
    ({"type": "adaptive"}, None, "effort", "medium"),
    ({"type": "disabled"}, None, "effort", None),
    ({"type": "enabled", "budget_tokens": 4000}, None, "budget", None),  # not a model that takes an effort
])
def test_messages_thinking_to_effort(thinking: Any, output_config: Any, style: Any, expect: str | None) -> None:
    assert openai_effort(thinking, output_config, ModelReasoning(style)) == expect


# -- billing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("price, usage, cost", [
    (PriceConfig(input=3, cached_input=0.3, cache_write=3.75, output=15), Usage(1_201_000, 0, "upstream", 1_000_000, 200_000),
     1000 * 3 / 1e6 + 0.3 + 0.75),
    (PriceConfig(input=3, output=15), Usage(1_201_000, 0, "upstream", 1_000_000, 200_000), 1_201_000 * 3 / 1e6),
    (PriceConfig(input=2, cached_input=1, output=8), Usage(1_000_000, 1_000_000, "upstream", 500_000), 1.0 + 0.5 + 8),
])
def test_cache_reads_and_writes_priced_apart(price: PriceConfig, usage: Usage, cost: float) -> None:
    p = Pricing({"m": price}, BillingConfig())
    assert p.cost(price, _req({}), usage) == pytest.approx(cost)


def test_cache_write_price_parsed() -> None:
    cfg = parse_config({"prices": {"m": {"input": 3, "cache_write": 3.75}}}, {})
    assert cfg.prices["m"].cache_write == 3.75 and cfg.prices["m"].cached_input is None


def test_anthropic_usage_reads_both_cache_fields() -> None:
    u = from_anthropic_usage({"input_tokens": 5, "cache_creation_input_tokens": 7, "cache_read_input_tokens": 11, "output_tokens": 3})
    assert u is not None and (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens) == (23, 11, 7)


# -- OpenAI chat (reasoning_content) -> /v1/messages -------------------------------------------------------


def _sse_events(data: bytes) -> list[tuple[str, Any]]:
    return [(e.event, orjson.loads(e.data)) for e in SSEParser().feed(data)]


def test_recorded_reasoning_stream_to_messages_split_at_every_offset() -> None:
    raw = (DATA / "chat_stream_reasoning.sse").read_bytes()
    whole = MessagesStream("pub", message_id="msg_x")
    expected = whole.feed(raw) + whole.close()
    for cut in range(len(raw) + 1):
        h = MessagesStream("pub", message_id="msg_x")
        assert h.feed(raw[:cut]) + h.feed(raw[cut:]) + h.close() == expected, cut
    events = _sse_events(expected)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""}]
    thinking = "".join(d["delta"]["thinking"] for n, d in events if d.get("delta", {}).get("type") == "thinking_delta")
    raw_thinking = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("reasoning_content") or ""
        for line in raw.split(b"\n") if line.startswith(b"data: {") and b'"choices":[{' in line)
    assert thinking == raw_thinking and thinking
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1]


@pytest.mark.parametrize("message, blocks", [
    ({"role": "assistant", "content": "Hi", "reasoning_content": "Think."},
     [{"type": "thinking", "thinking": "Think.", "signature": ""}, {"type": "text", "text": "Hi"}]),
    ({"role": "assistant", "content": "Hi", "reasoning": "Think."},
     [{"type": "thinking", "thinking": "Think.", "signature": ""}, {"type": "text", "text": "Hi"}]),
    ({"role": "assistant", "content": "Hi", "reasoning_content": ""}, [{"type": "text", "text": "Hi"}]),
])
def test_reasoning_content_to_thinking_block(message: dict[str, Any], blocks: list[Any]) -> None:
    out, _ = from_openai_completion({"choices": [{"message": message, "finish_reason": "stop"}]}, "pub")
    assert out["content"] == blocks


def test_messages_usage_excludes_cache_reads_and_writes() -> None:
    assert to_anthropic_usage(Usage(1000, 5, "upstream", 600, 300)) == {
        "input_tokens": 100, "output_tokens": 5, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 600}


def test_messages_thinking_param_to_openai_body() -> None:
    body = {"max_tokens": 100, "thinking": {"type": "enabled", "budget_tokens": 30000},
            "messages": [{"role": "user", "content": "Hi"}]}
    assert to_openai_chat(body, "o3", False, ReasoningTable().for_model("o3"))["reasoning_effort"] == "high"
    assert "reasoning_effort" not in to_openai_chat(body, "gpt-4o", False, ReasoningTable().for_model("gpt-4o"))


# -- OpenAI chat <-> Gemini --------------------------------------------------------------------------------

GEM_SIG = "CtwDAdHtim9mSxLqNXvd1pQ2W0aJ8o+Pb1RkdQ5f"


def _gemini(body: dict[str, Any], model: str = "gemini-2.5-flash", stream: bool = False) -> Any:
    target = Target("g", "gemini", "https://generativelanguage.googleapis.com", 0, "gk", model)
    up = GeminiAdapter().build_request(_req({"messages": [{"role": "user", "content": "Hi"}], **body}, stream), target)
    assert isinstance(up.body, bytes)
    return orjson.loads(up.body)


@pytest.mark.parametrize("body, model, config", [
    ({"reasoning_effort": "minimal"}, "gemini-2.5-flash", {"thinkingBudget": 1024, "includeThoughts": True}),
    ({"reasoning_effort": "medium"}, "gemini-2.5-pro", {"thinkingBudget": 8192, "includeThoughts": True}),
    ({"reasoning_effort": "high"}, "gemini-2.5-flash", {"thinkingBudget": 24576, "includeThoughts": True}),
    ({"reasoning_effort": "none"}, "gemini-2.5-flash", {"thinkingBudget": 0}),
    ({"reasoning_effort": "high"}, "gemini-3-pro-preview", {"thinkingLevel": "high", "includeThoughts": True}),
    ({"reasoning_effort": "minimal"}, "models/gemini-3-flash", {"thinkingLevel": "low", "includeThoughts": True}),
    ({}, "gemini-2.5-flash", None),
])
def test_effort_to_gemini_thinking_config(body: dict[str, Any], model: str, config: Any) -> None:
    assert (_gemini(body, model).get("generationConfig") or {}).get("thinkingConfig") == config


def test_thought_signature_goes_back_on_its_function_call() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": GEM_SIG}}}
    sent = _gemini({"messages": [{"role": "user", "content": "Weather?"},
                                 {"role": "assistant", "content": None, "tool_calls": [call]},
                                 {"role": "tool", "tool_call_id": "call_1", "content": "18"}]})
    assert sent["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": GEM_SIG}]}


def test_gemini_thoughts_and_signature_in_a_whole_answer() -> None:
    raw = orjson.dumps({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
        {"text": "Thinking it over.", "thought": True},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": GEM_SIG}]}}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 20,
                          "cachedContentTokenCount": 6}})
    body, usage = GeminiAdapter().parse_response(_req({"messages": []}), 200, raw)
    msg = orjson.loads(body)["choices"][0]["message"]
    assert msg["reasoning_content"] == "Thinking it over."
    assert msg["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": GEM_SIG}}
    assert usage is not None and (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (10, 6, 25)


def _gem_run(raw: bytes, cuts: list[int]) -> tuple[bytes, GeminiStream]:
    h = GeminiStream(_req({"messages": [], "stream": True}, stream=True))
    out, start = b"", 0
    for end in [*cuts, len(raw)]:
        out += h.feed(raw[start:end])
        start = end
    return re.sub(rb'"created":\d+', b'"created":0', out + h.close()), h  # the clock's second may tick between runs


def test_recorded_gemini_thinking_stream_split_at_every_offset() -> None:
    raw = (DATA / "gemini_stream_thinking.sse").read_bytes()
    whole, h = _gem_run(raw, [])
    assert h.done
    for i in range(1, len(raw)):
        assert _gem_run(raw, [i])[0] == whole, i
    frames = [orjson.loads(f[6:]) for f in whole.split(b"\n\n") if f and f != b"data: [DONE]"]
    deltas = [f["choices"][0]["delta"] for f in frames if f["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (
        "**Weighing the request** The user wants Paris weather; a tool call is needed. **Choosing units** Celsius — «métrique».")
    [call] = [c for d in deltas for c in d.get("tool_calls", ())]
    assert call["extra_content"] == {"google": {"thought_signature": GEM_SIG}}
    assert frames[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    assert frames[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 92}


@pytest.mark.parametrize("obj, cached, written", [
    ({"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 40}}, 40, 0),
    ({"prompt_tokens": 100, "completion_tokens": 1, "cache_creation_input_tokens": 50}, 0, 50),
    ({"input_tokens": 100, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 20}}, 10, 20),
    ({"prompt_tokens": 100, "completion_tokens": 1, "cache_creation_input_tokens": 500}, 0, 0),  # more than the prompt: ignored
])
def test_passthrough_usage_reads_cache_reads_and_writes(obj: dict[str, Any], cached: int, written: int) -> None:
    u = usage_from_openai(obj)
    assert u is not None and (u.cached_tokens, u.cache_write_tokens) == (cached, written)


def test_responses_over_claude_keep_cache_writes() -> None:
    usage, _ = usage_from_chat({"prompt_tokens": 300, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 100},
                                "cache_creation_input_tokens": 150})
    out = responses_usage(usage)
    assert out is not None and out["input_tokens_details"] == {"cached_tokens": 100, "cache_write_tokens": 150}


def test_reservation_covers_the_thinking_budget() -> None:
    price = PriceConfig(input=0, output=10)
    p = Pricing({"claude": price}, BillingConfig(), ReasoningTable(budgets={"high": 20000}))
    plain = p.worst_case(price, _req({"max_tokens": 1000}), 0)
    thinking = p.worst_case(price, _req({"max_tokens": 1000, "reasoning_effort": "high"}), 0)
    assert plain == pytest.approx(1000 * 10 / 1e6) and thinking == pytest.approx(21000 * 10 / 1e6)
    assert p.worst_case(price, _req({"max_tokens": 30000, "reasoning_effort": "high"}), 0) == pytest.approx(0.3)
