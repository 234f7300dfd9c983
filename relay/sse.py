"""Server-sent events: a boundary splitter for passthrough and an incremental parser for translation.

Both are split-safe: bytes may arrive cut at any offset (inside a field, a CRLF or a UTF-8 sequence).
Neither rescans what it has already seen; each keeps only the unfinished tail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DONE", "EventSplitter", "SSEEvent", "SSEParser", "encode_event", "has_done", "has_event", "iter_events",
]

DONE = b"[DONE]"
# 1 MiB: one event larger than this is not a stream we can relay (and would be an unbounded buffer).
MAX_EVENT_BYTES = 1 << 20


class EventTooLarge(ValueError):
    pass


def _last_boundary(buf: bytes) -> int:
    """Offset just past the last blank line in buf (0 if none).

    A line ends at CRLF, LF or CR (WHATWG), so a blank line is two line ends in a row: every such pair
    contains LF LF, LF CR or CR CR (CRLF CRLF holds LF CR), and ends there or one LF later. Streams
    without CR (nearly all) take one search.
    """
    if b"\r" not in buf:
        lf = buf.rfind(b"\n\n")
        return lf + 2 if lf >= 0 else 0
    end = max(buf.rfind(b"\n\n"), buf.rfind(b"\n\r"), buf.rfind(b"\r\r"))
    if end < 0:
        return 0
    end += 2
    if buf[end - 1 : end] == b"\r" and buf[end : end + 1] == b"\n":
        end += 1  # the second line end was a CRLF
    return end


class EventSplitter:
    """Cuts a byte stream into runs of whole events, without parsing them.

    `feed` returns the longest prefix that ends on an event boundary and keeps the rest. In the common case
    (the chunk ends on a boundary and nothing is held) the chunk itself is returned: no copy.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._tail:
            chunk = self._tail + chunk
        end = _last_boundary(chunk)
        if end == len(chunk):
            self._tail = b""
            return chunk
        self._tail = chunk[end:]
        if len(self._tail) > MAX_EVENT_BYTES:
            raise EventTooLarge("stream event over 1 MiB")
        return chunk[:end]

    def flush(self) -> bytes:
        """What is left at the end of the stream (an unterminated last event)."""
        tail, self._tail = self._tail, b""
        return tail


def iter_events(block: bytes) -> list[bytes]:
    """Split a run of whole events into events (each without its terminating blank line); line ends
    come out as LF whatever the upstream used."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    # A block may start with the LF of a CRLF whose CR ended the previous block.
    return [e.lstrip(b"\n") for e in block.split(b"\n\n") if e.strip(b"\n")]


# A `data: [DONE]` line (the OpenAI stream's own end), not the text "[DONE]" inside a chunk: JSON strings
# hold no raw line end, so a line that is only this cannot come from content.
_DONE_LINE = re.compile(rb"(?:^|[\r\n])data:[ ]?\[DONE\][ \t]*(?:\r\n|\r|\n|$)")


def has_done(block: bytes) -> bool:
    """`block` (whole events) holds the `data: [DONE]` event."""
    return DONE in block and _DONE_LINE.search(block) is not None


def has_event(block: bytes, name: bytes) -> bool:
    """`block` (whole events) holds an event whose `event:` line names `name` (e.g. message_stop)."""
    if name not in block:
        return False
    return re.search(rb"(?:^|[\r\n])event:[ ]?" + re.escape(name) + rb"[ \t]*(?:\r\n|\r|\n|$)", block) is not None


@dataclass(slots=True)
class SSEEvent:
    event: str = ""  # "" means the default type, "message"
    data: str = ""
    id: str | None = None


class SSEParser:
    """Incremental SSE parser (the WHATWG algorithm): feed bytes, get whole events."""

    __slots__ = ("_buf", "_data", "_event", "_has_data", "_id")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_data = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        out: list[SSEEvent] = []
        start = 0
        n = len(buf)
        while start < n:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else n)
            if cr >= 0:
                if cr == n - 1:
                    break  # a CR at the very end may be the first half of CRLF
                end, nxt = cr, cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            ev = self._line(buf[start:end])
            if ev is not None:
                out.append(ev)
            start = nxt
        self._buf = buf[start:]
        if len(self._buf) > MAX_EVENT_BYTES:
            raise EventTooLarge("stream line over 1 MiB")
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: an event without its final blank line is dropped, as the spec says."""
        self._buf = b""
        return []

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            if not self._has_data and not self._event:
                return None
            ev = SSEEvent(self._event, "\n".join(self._data), self._id)
            self._event, self._data, self._has_data = "", [], False
            return ev
        if line[:1] == b":":
            return None
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        text = value.decode("utf-8", "replace")
        if name == b"data":
            self._data.append(text)
            self._has_data = True
        elif name == b"event":
            self._event = text
        elif name == b"id" and "\0" not in text:
            self._id = text
        return None


def encode_event(data: bytes, event: str | None = None) -> bytes:
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"
