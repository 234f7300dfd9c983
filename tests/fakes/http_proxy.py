"""A small forward HTTP proxy (asyncio), as a channel's egress proxy in tests: CONNECT tunnels (https
upstreams) and absolute-URI requests (http upstreams), an optional Basic Proxy-Authorization requirement
(407 without it), and a log of every connection it served.

An absolute-URI request is forwarded in origin form with `Connection: close` and without the Proxy-*
headers, then the bytes are piped both ways: one request per client connection, as simple proxies do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ForwardProxy", "ProxyLog"]

_HEAD_MAX = 64 * 1024


@dataclass
class ProxyLog:
    method: str
    target: str  # host:port (CONNECT) or the absolute URI
    authorized: bool
    status: int  # what the proxy answered itself (200 CONNECT, 407, 502), 0 when forwarded


@dataclass
class ForwardProxy:
    auth: tuple[str, str] | None = None
    log: list[ProxyLog] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> str:
        """Listen on 127.0.0.1; returns the proxy's URL (no credentials)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_MAX:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [line for line in lines[1:] if line]
        authorized = self._authorized(headers)
        if not authorized:
            self.log.append(ProxyLog(method, target, False, 407))
            writer.write(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n'
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            try:
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
            except OSError:
                self.log.append(ProxyLog(method, target, True, 502))
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            self.log.append(ProxyLog(method, target, True, 200))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _pipe_both(reader, writer, up_reader, up_writer)
            return
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            self.log.append(ProxyLog(method, target, True, 400))
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        self.log.append(ProxyLog(method, target, True, 0))
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))]
        up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1"))
        up_writer.write(("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        await _pipe_both(reader, writer, up_reader, up_writer)

    def _authorized(self, headers: list[str]) -> bool:
        if self.auth is None:
            return True
        want = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        for h in headers:
            name, _, value = h.partition(":")
            if name.strip().lower() == "proxy-authorization" and value.strip() == want:
                return True
        return False


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            dst.write_eof()


async def _pipe_both(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        up_writer.close()
        with contextlib.suppress(Exception):
            await up_writer.wait_closed()
