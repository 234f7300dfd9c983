"""What every provider adapter offers, and helpers they share.

An adapter is pure: bytes and dicts in, bytes and dicts out. It never does I/O and never chooses an
account (the router hands it a Target).
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import orjson

from ..errors import UpstreamFailure
from ..sse import iter_events
from ..tokens import CompletionCounter
from ..types import BodyFactory, FormField, RelayRequest, Target, UpstreamRequest, Usage

# Responses up to this size are parsed whole to read their usage.
_PARSE_WHOLE = 256 * 1024

__all__ = [
    "Adapter",
    "DeliveredText",
    "StreamHandler",
    "classify_status",
    "encode_form",
    "extract_usage_object",
    "retry_after_seconds",
]


class StreamHandler(Protocol):
    """Per-request stream state: upstream bytes in, client bytes out."""

    usage: Usage | None  # set once the upstream reported usage
    done: bool  # the upstream ended the stream cleanly ([DONE], message_stop, ...)
    events: int  # events seen

    @property
    def completion(self) -> CompletionCounter:
        """The text delivered so far, for a count when the upstream gives no usage."""
        ...

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class Adapter(Protocol):
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest: ...

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]: ...

    def stream_handler(self, req: RelayRequest) -> StreamHandler: ...

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure: ...


class DeliveredText:
    """The completion text a passthrough stream delivered, counted only if someone asks.

    Whole events are held as they are (references, no copy) and scanned together with one regex pass once
    2 KiB are held (about 8 chat events: a few KB per open stream at most, which matters with thousands
    of slow streams) or when `counter` is read (the upstream gave no usage). A stream that ends with the
    upstream's usage before that is never scanned at all. Error events are never completion.
    """

    __slots__ = ("_held", "_size", "_text", "_values")

    SCAN_BYTES = 2 * 1024

    def __init__(self, values: re.Pattern[bytes], model: str) -> None:
        self._values = values  # a regex whose group 1 is a raw JSON string value the client reads as text
        self._text = CompletionCounter(model)
        self._held: list[bytes] = []
        self._size = 0

    def hold(self, block: bytes) -> None:
        self._held.append(block)
        self._size += len(block)
        if self._size > self.SCAN_BYTES:
            self._scan()

    @property
    def counter(self) -> CompletionCounter:
        if self._held:
            self._scan()
        return self._text

    def _scan(self) -> None:
        held = self._held
        block = held[0] if len(held) == 1 else b"".join(held)
        self._held, self._size = [], 0
        if b'"error":' in block:
            block = b"\n\n".join(e for e in iter_events(block) if b'"error":' not in e)
        self._text.extend(self._values.findall(block))


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After (seconds or an HTTP date) or retry-after-ms, as seconds."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_status(status: int, headers: Mapping[str, str], body: bytes, content_type: str) -> UpstreamFailure:
    """The provider-independent reading of an upstream error status."""
    if status == 429:
        kind = "rate_limited"
    elif status in (401, 403):
        kind = "auth"
    elif status == 408 or status >= 500:
        kind = "server"
    else:
        kind = "client"
    return UpstreamFailure(
        f"upstream answered {status}", kind=kind, status=status,
        retry_after=retry_after_seconds(headers), body=body, content_type=content_type,
    )


def extract_usage_object(body: bytes) -> dict[str, object] | None:
    """The top-level `"usage": {...}` object of a JSON response.

    A small body is parsed whole (orjson is faster than any byte scan in Python). A large one (embeddings,
    images) has only its usage object cut out and parsed: it sits near the end of OpenAI-style responses.
    """
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    if len(body) <= _PARSE_WHOLE:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        return usage if isinstance(usage, dict) else None
    j = i + 7
    n = len(body)
    while j < n and body[j] in b" \t\r\n:":
        j += 1
    if j >= n or body[j] != 0x7B:  # "{"; null or anything else: no usage
        return None
    # the matching "}" found brace by brace with C-speed finds (usage holds no strings with braces)
    depth, k = 0, j
    while True:
        o, c = body.find(b"{", k), body.find(b"}", k)
        if c < 0:
            return None
        if 0 <= o < c:
            depth, k = depth + 1, o + 1
            continue
        depth, k = depth - 1, c + 1
        if depth == 0:
            break
    try:
        obj = orjson.loads(body[j:k])
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def encode_form(fields: tuple[FormField, ...], replace: Mapping[str, str]) -> tuple[str, BodyFactory]:
    """multipart/form-data from parsed fields; file parts are read back from their spool in 64 KiB pieces."""
    boundary = "relay-" + secrets.token_hex(12)

    async def body() -> AsyncIterator[bytes]:
        for f in fields:
            disp = f'form-data; name="{_quote(f.name)}"'
            if f.filename is not None:
                disp += f'; filename="{_quote(f.filename)}"'
            head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
            if f.content_type:
                head += f"Content-Type: {f.content_type}\r\n"
            yield (head + "\r\n").encode()
            if f.spool is not None:
                f.spool.seek(0)
                while piece := f.spool.read(65536):
                    yield piece
            elif f.name in replace:
                yield replace[f.name].encode()
            else:
                yield f.value
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", body


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
