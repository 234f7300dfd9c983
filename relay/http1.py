"""HTTP/1.1 to the upstreams: keep-alive connections pooled per origin, responses parsed by httptools.

Every relayed request is one upstream call, so the call's own cost is the relay's floor: aiohttp's client
spends about 80 µs of CPU on a small call here, this about a third of that. It does only what an upstream
call needs: one request per connection at a time, bodies of bytes or async pieces (with Content-Length, or
chunked), responses framed by Content-Length, chunked or the connection's end, gzip and deflate decoded,
TLS with the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR as OpenSSL reads them). httptools is
llhttp (Node.js's HTTP parser), as uvicorn uses it. Channels with an egress proxy go through aiohttp
(relay/upstream.py).

A pooled connection is reused only after a response was read to its end on a keep-alive connection; a
response closed before that closes its connection. Idle connections are dropped after `keepalive` seconds.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

from .http1_response import BodyError, ConnectFailed, Connection, HttpError, Response

__all__ = ["BodyError", "ConnectFailed", "HttpError", "Pool", "Response"]

_ORIGINS_MAX = 1024


class Pool:
    """Connections per origin (scheme, host, port), reused last-in first-out."""

    def __init__(self, keepalive: float = 30.0, user_agent: str = "relay") -> None:
        self._keepalive = keepalive
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._origins: dict[str, tuple[tuple[str, str, int], str, str]] = {}
        self._tls: ssl.SSLContext | None = None
        self._swept = time.monotonic()
        self._defaults = f"User-Agent: {user_agent}\r\nAccept-Encoding: identity\r\n"

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | AsyncIterator[bytes] | None,
        connect_timeout: float,
    ) -> Response:
        """Send the request; returns once the response's headers arrived. HttpError when it failed."""
        origin, host, target = self._origin(url)
        head, chunked = self._head(method, host, target, headers, body)
        conn = await self._connection(origin, connect_timeout)
        resp = conn.resp = Response(conn)
        try:
            await self._send(conn, head, chunked, body)
            await resp.started()
        except BaseException:
            resp.close()
            raise
        return resp

    def idle(self, conn: Connection) -> None:
        now = conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        if now - self._swept > self._keepalive:  # origins no longer called keep no open sockets
            self._swept = now
            for origin, conns in list(self._idle.items()):
                kept = []
                for c in conns:
                    if c.transport is not None and now - c.idle_since < self._keepalive:
                        kept.append(c)
                    else:
                        c.close()
                if kept:
                    self._idle[origin] = kept
                else:
                    del self._idle[origin]

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    # -- connections --------------------------------------------------------------------------------------

    def _origin(self, url: str) -> tuple[tuple[str, str, int], str, str]:
        got = self._origins.get(url)
        if got is None:
            u = urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ConnectFailed("not an http(s) URL")
            port = u.port or (443 if u.scheme == "https" else 80)
            default = port == (443 if u.scheme == "https" else 80)
            name = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
            host = name if default else f"{name}:{port}"
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            got = ((u.scheme, u.hostname, port), host, target)
            if len(self._origins) >= _ORIGINS_MAX:
                self._origins.clear()
            self._origins[url] = got
        return got

    async def _connection(self, origin: tuple[str, str, int], timeout: float) -> Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            t = conn.transport
            if t is not None and not t.is_closing() and now - conn.idle_since < self._keepalive:
                return conn
            conn.close()
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(origin, loop, self.idle), host, port, ssl=tls, server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise ConnectFailed("connect timed out") from None
        except ssl.SSLError as e:
            raise ConnectFailed(f"TLS handshake failed ({e.reason or type(e).__name__})") from None
        except OSError as e:
            raise ConnectFailed(f"could not connect ({type(e).__name__})") from None
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    # -- the request --------------------------------------------------------------------------------------

    def _head(
        self, method: str, host: str, target: str, headers: Mapping[str, str], body: bytes | AsyncIterator[bytes] | None,
    ) -> tuple[bytes, bool]:
        """The request line and headers, and whether the body goes chunked."""
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        framed = has_host = False
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ConnectFailed("a request header holds a line break")
            low = name.lower()
            if low in ("content-length", "transfer-encoding"):
                framed = True
            elif low == "host":
                has_host = True
            lines.append(f"{name}: {value}\r\n")
        if not has_host:
            lines.insert(1, f"Host: {host}\r\n")
        lines.append(self._defaults)
        chunked = False
        if isinstance(body, (bytes, bytearray, memoryview)):
            if not framed:
                lines.append(f"Content-Length: {len(body)}\r\n")
        elif body is None:
            if method in ("POST", "PUT", "PATCH") and not framed:
                lines.append("Content-Length: 0\r\n")
        elif not framed:
            lines.append("Transfer-Encoding: chunked\r\n")
            chunked = True
        lines.append("\r\n")
        return "".join(lines).encode("utf-8"), chunked  # as aiohttp writes them

    @staticmethod
    async def _send(conn: Connection, head: bytes, chunked: bool, body: bytes | AsyncIterator[bytes] | None) -> None:
        t = conn.transport
        if t is None:
            raise ConnectFailed("upstream closed the connection")
        if body is None:
            t.write(head)
        elif isinstance(body, (bytes, bytearray, memoryview)):
            if len(body) <= 64 * 1024:
                t.write(head + bytes(body))
            else:
                t.write(head)
                t.write(body)
        else:
            t.write(head)
            async for piece in body:
                if not piece:
                    continue
                await conn.drain()
                t = conn.transport
                if t is None:
                    raise ConnectFailed("upstream closed the connection while the request was sent")
                if chunked:
                    t.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
                else:
                    t.write(piece)
            if chunked:
                t.write(b"0\r\n\r\n")
        await conn.drain()
