"""Usage when the upstream reports none: the prompt plus the completion text the client actually received."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from relay.adapters.openai import OpenAIPassthrough
from relay.tokens import count_text, prompt_tokens
from relay.types import FormField, KeyRecord, RelayRequest
from relay.usage import estimate_prompt_tokens, estimate_usage, request_prompt_tokens, usage_when_missing

MODEL = "gpt-4o"
CONTENTS = ["Hel", "lo, ", 'she said \\"caf\\u00e9\\"', " — and left.", "\\n\\nLine\\\\two", " 🚀 done"]
TEXT = orjson.loads(b'"' + "".join(CONTENTS).encode() + b'"')


def chunk(delta: dict[str, object] | str, finish: str | None = None) -> bytes:
    if isinstance(delta, str):  # raw content bytes, escapes as written
        d = '{"content":"' + delta + '"}'
    else:
        d = orjson.dumps(delta).decode()
    f = "null" if finish is None else f'"{finish}"'
    return (
        'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
        f'"choices":[{{"index":0,"delta":{d},"logprobs":null,"finish_reason":{f}}}],"usage":null}}\n\n'
    ).encode()


EVENTS = [
    chunk({"role": "assistant", "content": ""}),
    *(chunk(c) for c in CONTENTS),
    chunk({}, "stop"),
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}\n\n',
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)


def feed(h: OpenAIPassthrough, data: bytes, cuts: list[int]) -> bytes:
    out, prev = [], 0
    for c in [*cuts, len(data)]:
        out.append(h.feed(data[prev:c]))
        prev = c
    out.append(h.close())
    return b"".join(out)


def test_escapes_are_counted_as_the_decoded_text() -> None:
    assert TEXT == 'Hello, she said "café" — and left.\n\nLine\\two 🚀 done'
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    feed(h, STREAM, [])
    assert h.completion.tokens(MODEL) == count_text(TEXT, MODEL)


@pytest.mark.parametrize("cut", range(len(STREAM)))
def test_split_at_every_offset_counts_the_same(cut: int) -> None:
    h = OpenAIPassthrough(keep_usage_chunk=True, model=MODEL)
    assert feed(h, STREAM, [cut]) == STREAM
    assert h.completion.tokens(MODEL) == count_text(TEXT, MODEL)


def test_byte_by_byte() -> None:
    h = OpenAIPassthrough(keep_usage_chunk=True, model=MODEL)
    assert feed(h, STREAM, list(range(1, len(STREAM)))) == STREAM
    assert h.completion.tokens(MODEL) == count_text(TEXT, MODEL)


@pytest.mark.parametrize("k", range(len(CONTENTS) + 1))
def test_cut_stream_counts_what_was_delivered(k: int) -> None:
    """A stream that broke after k content chunks: exactly their text, however the bytes were grouped."""
    delivered = b"".join(EVENTS[: 1 + k])
    expected = count_text(orjson.loads(b'"' + "".join(CONTENTS[:k]).encode() + b'"'), MODEL)
    for cuts in ([], [len(delivered) // 2], list(range(3, len(delivered), 17))):
        h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
        feed(h, delivered + b'data: {"id":"c1","choices":[{"delta":{"content":"never fini', cuts)
        assert h.usage is None and not h.done
        assert h.completion.tokens(MODEL) == expected


def test_error_event_contributes_nothing() -> None:
    error = (
        b'data: {"error":{"message":"The server had an error while processing your request. Sorry about that!",'
        b'"type":"server_error","param":null,"code":null,"metadata":{"content":"upstream text","text":"more"}}}\n\n'
    )
    for stream in (EVENTS[0] + EVENTS[1] + error, EVENTS[0] + EVENTS[1] + error + EVENTS[2]):
        h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
        feed(h, stream, [])
        expected = "Hel" if stream.endswith(error) else "Hello, "
        assert h.completion.tokens(MODEL) == count_text(expected, MODEL)
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    feed(h, error, [])
    assert h.completion.tokens(MODEL) == 0


def test_reasoning_refusal_and_tool_arguments_count() -> None:
    stream = b"".join([
        chunk({"role": "assistant", "content": None, "reasoning_content": "Think first."}),
        chunk({"reasoning": " Then more."}),
        chunk({"refusal": " No."}),
        chunk({"tool_calls": [{"index": 0, "id": "t1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        b"data: [DONE]\n\n",
    ])
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    feed(h, stream, [])
    assert h.completion.tokens(MODEL) == count_text('Think first. Then more. No.{"city": "Paris"}', MODEL)


def test_legacy_completions_text() -> None:
    stream = b"".join(
        b'data: {"id":"x","object":"text_completion","choices":[{"text":"' + t + b'","index":0,"logprobs":null,'
        b'"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}\n\n'
        for t in (b"Once", b" upon", b" a time")
    ) + b"data: [DONE]\n\n"
    h = OpenAIPassthrough(keep_usage_chunk=False, model="gpt-3.5-turbo-instruct")
    feed(h, stream, [])
    assert h.completion.tokens("gpt-3.5-turbo-instruct") == count_text("Once upon a time", "gpt-3.5-turbo-instruct")


def test_megabyte_completion_keeps_memory_bounded() -> None:
    piece = "All work and no play makes Jack a dull boy, 42 times — ünïcode too. "
    raw = orjson.dumps(piece).decode()[1:-1]
    n = 1_000_000 // len(piece.encode()) + 1
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        most = 0
        for i in range(n):
            h.feed(chunk(raw))  # each event made fresh: whatever the handler keeps shows up as held memory
            if i % 100 == 0:
                most = max(most, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert h.completion.raw_bytes >= 1_000_000
    assert most < 128 * 1024  # about 16 KiB of events and 16 KiB of text, for a 1 MB completion (4 MB of events)
    assert h.completion.tokens(MODEL) == count_text(piece * n, MODEL)


def test_a_stream_with_usage_is_never_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[bytes] = []
    pattern = OpenAIPassthrough.TEXT_VALUES

    class Spy:
        def findall(self, block: bytes) -> list[bytes]:
            scans.append(block)
            return pattern.findall(block)

    monkeypatch.setattr(OpenAIPassthrough, "TEXT_VALUES", Spy())
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    feed(h, STREAM, [])
    assert h.usage is not None and h.usage.completion_tokens == 12
    assert scans == []
    assert h.completion.held == h.completion.raw_bytes  # asked: scanned once, still not decoded
    assert len(scans) == 1
    assert h.completion.tokens() == count_text(TEXT, MODEL)


def test_value_shapes() -> None:
    events = [
        b'data: {"choices":[{"delta":{"content": "spaced"},"logprobs":{"content":[{"token":"x"}]}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":null,"refusal":null}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":" ends in a backslash\\\\"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":" \\"quoted\\" \\u00e9\\ud83d\\ude80"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"unterminated}}]}\n\n',  # malformed: skipped, not merged
    ]
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    feed(h, b"".join(events), [])
    assert h.completion.tokens() == count_text('spaced ends in a backslash\\ "quoted" é🚀', MODEL)


# -- usage.py ---------------------------------------------------------------------------------------------


def req(payload: dict[str, object], endpoint: str = "chat/completions", **kw: object) -> RelayRequest:
    fields: dict[str, object] = dict(
        id="r1", endpoint=endpoint, model=str(payload.get("model", "")), body=orjson.dumps(payload), json=payload,
        stream=bool(payload.get("stream")), wants_usage=False, key=KeyRecord("k", "k", "h", "sk-"), started=0.0,
    )
    fields.update(kw)
    return RelayRequest(**fields)  # type: ignore[arg-type]


CHAT = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 4000}


def test_usage_from_a_cut_stream() -> None:
    r = req(CHAT)
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    feed(h, b"".join(EVENTS[:4]), [])
    u = estimate_usage(r, h)
    assert u.source == "estimate"
    assert u.prompt_tokens == prompt_tokens("chat/completions", CHAT) == 3 + 1 + 2 + 3
    assert u.completion_tokens == count_text('Hello, she said "café"', MODEL)
    assert usage_when_missing(r, h.completion.tokens(MODEL)) == u


def test_usage_without_any_text() -> None:
    r = req(CHAT)
    h = OpenAIPassthrough(keep_usage_chunk=False, model=MODEL)
    feed(h, EVENTS[0], [])
    assert estimate_usage(r, h).completion_tokens == 0
    assert usage_when_missing(r, None).completion_tokens == 0
    assert estimate_usage(r, None).completion_tokens == 0


def test_old_calling_convention_still_works() -> None:
    r = req(CHAT)
    u = estimate_usage(r, 8)
    assert (u.prompt_tokens, u.completion_tokens) == (9, 5)


def test_multipart_form_fields_are_the_prompt() -> None:
    r = req(
        {}, endpoint="audio/transcriptions", body=b"", json=None, model="whisper-1", content_type="multipart/form-data",
        form=(FormField("model", b"whisper-1"), FormField("prompt", b"hello world"),
              FormField("file", b"", filename="a.mp3", content_type="audio/mpeg")),
    )
    assert request_prompt_tokens(r) == 2
    assert usage_when_missing(r, None).prompt_tokens == 2


def test_reservation_estimate_stays_cheap() -> None:
    r = req(CHAT)
    assert estimate_prompt_tokens(r) == len(r.body) // 4
