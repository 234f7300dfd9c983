"""SSE splitter and parser: the same events whatever the byte offsets the stream is cut at."""

from __future__ import annotations

import pytest

from relay.sse import EventSplitter, EventTooLarge, SSEEvent, SSEParser, has_done, has_event, iter_events

STREAM = (
    b'data: {"a":1}\n\n'
    b": keep-alive comment\n\n"
    b"event: message_start\ndata: {\"b\":\"\xc3\xa9\xe2\x82\xac\"}\n\n"
    b"id: 7\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data:no-space\rdata: cr-only\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("", '{"a":1}'),
    SSEEvent("message_start", '{"b":"é€"}'),
    SSEEvent("", "line one\nline two", "7"),
    SSEEvent("", "no-space\ncr-only", "7"),
    SSEEvent("", "[DONE]", "7"),
]


def parse_in_pieces(cuts: list[int]) -> list[SSEEvent]:
    p = SSEParser()
    out: list[SSEEvent] = []
    prev = 0
    for c in [*cuts, len(STREAM)]:
        out.extend(p.feed(STREAM[prev:c]))
        prev = c
    return out + p.close()


def test_parser_whole_stream() -> None:
    assert parse_in_pieces([]) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_parser_split_at_every_offset(cut: int) -> None:
    assert parse_in_pieces([cut]) == EXPECTED


def test_parser_byte_by_byte() -> None:
    assert parse_in_pieces(list(range(1, len(STREAM)))) == EXPECTED


def test_parser_drops_unterminated_last_event() -> None:
    p = SSEParser()
    assert p.feed(b"data: complete\n\ndata: cut") == [SSEEvent("", "complete")]
    assert p.close() == []


OPENAI = b"".join(
    b'data: {"choices":[{"delta":{"content":"%d"}}]}\n\n' % i for i in range(5)
) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("cut", range(1, len(OPENAI)))
def test_splitter_forwards_only_whole_events_and_loses_nothing(cut: int) -> None:
    s = EventSplitter()
    out = [s.feed(OPENAI[:cut]), s.feed(OPENAI[cut:])]
    assert b"".join(out) == OPENAI
    for piece in out:
        assert piece == b"" or piece.endswith(b"\n\n")
    assert s.flush() == b""


def test_splitter_returns_the_chunk_itself_when_it_ends_on_a_boundary() -> None:
    chunk = bytes(OPENAI)
    assert EventSplitter().feed(chunk) is chunk


def test_splitter_crlf_boundaries() -> None:
    s = EventSplitter()
    assert s.feed(b"data: a\r\n\r\ndata: b\r\n") == b"data: a\r\n\r\n"
    assert s.feed(b"\r\n") == b"data: b\r\n\r\n"


def test_splitter_refuses_an_unbounded_event() -> None:
    s = EventSplitter()
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            s.feed(b"data: " + b"x" * 65536)


def test_iter_events() -> None:
    assert iter_events(b"data: a\r\n\r\ndata: b\n\n") == [b"data: a", b"data: b"]


# The same events with each kind of line end: LF, CRLF, CR alone, and a mix (a blank line is any two).
EVENTS = [b"data: {\"n\":%d}" % i for i in range(4)]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("cut", range(1, 40))
def test_splitter_cuts_whole_events_for_every_line_end(eol: bytes, cut: int) -> None:
    stream = b"".join(e + eol + eol for e in EVENTS)
    s = EventSplitter()
    out = [s.feed(stream[:cut]), s.feed(stream[cut:])]
    assert b"".join(out) + s.flush() == stream
    whole = b"".join(out)
    assert whole == stream  # the last event ends on its blank line: nothing is held at the end
    assert iter_events(out[0]) + iter_events(out[1]) == EVENTS


def test_splitter_forwards_a_cr_only_event_at_once() -> None:
    s = EventSplitter()
    assert s.feed(b"data: a\r\r") == b"data: a\r\r"
    assert s.feed(b"data: b\r") == b""
    assert s.feed(b"\rdata: c") == b"data: b\r\r"


@pytest.mark.parametrize(
    "block",
    [b"data: a\n\r\n", b"data: a\r\n\r", b"data: a\r\r\n", b"data: a\r\n\n"],
    ids=["lf-crlf", "crlf-cr", "cr-crlf", "crlf-lf"],
)
def test_splitter_mixed_line_ends_make_a_blank_line(block: bytes) -> None:
    assert EventSplitter().feed(block) == block


def test_has_done_only_for_the_done_event() -> None:
    text = b'data: {"choices":[{"delta":{"content":"say data: [DONE] now"}}]}\n\n'
    assert not has_done(text)
    assert not has_done(b'data: {"choices":[{"delta":{"content":"\\ndata: [DONE]\\n"}}]}\n\n')
    assert has_done(text + b"data: [DONE]\n\n")
    assert has_done(b"data:[DONE]\r\n\r\n")
    assert has_done(b"data: [DONE]\r\r")


def test_has_event_only_for_the_event_line() -> None:
    text = b'event: content_block_delta\ndata: {"delta":{"type":"text_delta","text":"event: message_stop"}}\n\n'
    assert not has_event(text, b"message_stop")
    assert has_event(text + b'event: message_stop\ndata: {"type":"message_stop"}\n\n', b"message_stop")
    assert has_event(b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n', b"message_stop")
