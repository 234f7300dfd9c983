"""One upstream HTTP/1.1 connection and the response it is reading (relay/http1.py pools them).

The connection feeds what arrives to httptools; the response holds the body's pieces until the caller reads
them, and stops the connection reading past 256 KiB held (a slow client), so a stream costs the relay a
bounded buffer, never the whole body.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Callable

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["BodyError", "ConnectFailed", "Connection", "HttpError", "Response"]

_HIGH_WATER = 256 * 1024  # body bytes held before the connection stops reading (the client is slow)


class HttpError(Exception):
    """The upstream call failed on the wire (never names the URL: it may carry a key)."""


class ConnectFailed(HttpError):
    """No connection (refused, unknown host, TLS) or the request could not be sent."""


class BodyError(HttpError):
    """The response was cut off, malformed, or in an encoding the relay cannot decode."""


class Response:
    __slots__ = ("_conn", "_decoder", "_eof_framed", "_error", "_pieces", "_ready", "_size", "_waiter",
                 "closed", "content_length", "done", "headers", "keep_alive", "status")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
        self.keep_alive = False
        self.done = False  # the whole body arrived
        self.closed = False
        self._ready: asyncio.Future[None] = conn.loop.create_future()
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: HttpError | None = None
        self._decoder: zlib._Decompress | None = None
        self._eof_framed = False  # no length, not chunked: the body ends with the connection

    # -- what the connection tells it ---------------------------------------------------------------------

    def _head(self, status: int, headers: CIMultiDict[str], keep_alive: bool) -> None:
        self.status, self.headers, self.keep_alive = status, CIMultiDictProxy(headers), keep_alive
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        length = headers.get("Content-Length")
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS)
        elif encoding != "identity":
            self._fail(BodyError(f"response in an unsupported content encoding ({encoding[:20]})"))
            return
        elif length is not None and length.isdigit():
            self.content_length = int(length)
        self._eof_framed = length is None and "chunked" not in headers.get("Transfer-Encoding", "").lower()
        if not self._ready.done():
            self._ready.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self.closed:
            return
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                self._fail(BodyError("response body could not be decoded"))
                return
            if not data:
                return
        self._pieces.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._pieces.append(tail)
        self.done = True
        self._wake()

    def _fail(self, error: HttpError) -> None:
        if self.done or self._error is not None:
            return
        self._error = error
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: no "never retrieved" warning if nobody waits any more
        self._wake()
        self._conn.close()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- the caller's side --------------------------------------------------------------------------------

    async def started(self) -> None:
        """Wait for the status line and headers."""
        await self._ready

    async def piece(self) -> bytes:
        """The next piece of the body as it arrived (b"" at its end); HttpError if it was cut off."""
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self.done:
                return b""
            if self.closed:
                raise BodyError("response closed")
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._pieces.popleft()
        self._size -= len(data)
        if self._size <= _HIGH_WATER // 4:
            self._conn.resume()
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The body, or its first `limit` bytes (the rest is not waited for)."""
        parts: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            data = await self.piece()
            if not data:
                break
            parts.append(data)
            size += len(data)
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    def close(self) -> None:
        """Done with the response: its connection goes back to the pool if the body arrived whole, else it
        is closed."""
        if self.closed:
            return
        self.closed = True
        self._pieces.clear()
        self._wake()
        if self.done:
            self._conn.give_back(self)
        else:
            self._conn.close()

    release = close


class Connection(asyncio.Protocol):
    def __init__(
        self, origin: tuple[str, str, int], loop: asyncio.AbstractEventLoop, on_idle: Callable[[Connection], None],
    ) -> None:
        self.origin, self.loop, self._on_idle = origin, loop, on_idle
        self.transport: asyncio.Transport | None = None
        self.resp: Response | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._raw: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.resp is None:  # bytes on an idle connection (or after its response was given up): not reusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._lost(BodyError("malformed response"))
        except httptools.HttpParserUpgrade:
            self._lost(BodyError("unexpected protocol upgrade"))

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        r = self.resp
        if r is not None and not r.done:
            if r._ready.done() and r._eof_framed and r._error is None:  # noqa: SLF001
                r._finish()  # noqa: SLF001 - a body that ends with the connection, ended
            else:
                r._fail(BodyError("upstream closed the connection"))  # noqa: SLF001
        self._wake_writer()

    def pause_writing(self) -> None:
        self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        d, self._drained = self._drained, None
        if d is not None and not d.done():
            d.set_result(None)

    # -- httptools ----------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        r = self.resp
        if r is not None and r.done:  # a second answer to one request: the connection is not to be trusted
            r.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        raw, self._raw = self._raw, []
        if status < 200:  # 100 Continue and the like: the response follows
            self._interim = True
            return
        if self.resp is not None and not self.resp.done:
            headers: CIMultiDict[str] = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)
            self.resp._head(status, headers, self._parser.should_keep_alive())  # noqa: SLF001

    def on_body(self, body: bytes) -> None:
        if self.resp is not None and not self.resp.done:
            self.resp._feed(body)  # noqa: SLF001

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.resp is not None and not self.resp.done:
            self.resp._finish()  # noqa: SLF001

    # -- the pool's side ----------------------------------------------------------------------------------

    def _lost(self, error: HttpError) -> None:
        if self.resp is not None:
            self.resp._fail(error)  # noqa: SLF001
        self.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectFailed("upstream closed the connection while the request was sent")
        if self._drained is not None:
            await self._drained

    def give_back(self, resp: Response) -> None:
        if self.resp is not resp:
            return
        self.resp = None
        if resp.keep_alive and self.transport is not None and not self.transport.is_closing():
            self.resume()
            self._on_idle(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.resp = None


