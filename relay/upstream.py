"""The only user of aiohttp's client: one pooled session, the timeouts, and failure classification.

Timeouts differ by call kind. A unary call has a total deadline. A stream has a first-byte deadline (until
response headers) and an idle deadline between chunks, never a total one: a long answer may stream for
many minutes. Errors never carry the upstream URL or key; they name what failed, not where.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp

from .config import TimeoutConfig
from .errors import UpstreamFailure
from .types import UpstreamRequest

__all__ = ["READ_ERRORS", "Upstream", "UpstreamResponse"]

UpstreamResponse = aiohttp.ClientResponse

# What reading an upstream body can raise: a reset, a cut chunked body, an idle timeout.
READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)

# 64 KiB: enough for any provider's error document; more is not worth holding.
MAX_ERROR_BODY = 64 * 1024
# A request body larger than this goes out in pieces of _PIECE, each once the socket took the last: written
# whole, the part the kernel does not take at once would be copied into the transport's buffer (a second
# copy of a 10 MB body per request in flight).
_PACED_BODY = 1024 * 1024
_PIECE = 256 * 1024


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    with memoryview(body) as view:
        for i in range(0, len(view), _PIECE):
            yield view[i : i + _PIECE]  # type: ignore[misc]  # a view, not a copy: aiohttp writes either


class Upstream:
    def __init__(self, timeouts: TimeoutConfig, max_response_bytes: int = 128 * 1024 * 1024) -> None:
        self._t = timeouts
        self._max_response = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        self._unary = aiohttp.ClientTimeout(total=timeouts.unary, sock_connect=timeouts.connect)
        # sock_read is the idle deadline between chunks (it also bounds the wait for headers, so the
        # first-byte deadline in effect is min(first_byte, idle))
        self._stream = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.idle)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "relay", "Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(self, ureq: UpstreamRequest, stream: bool) -> UpstreamResponse:
        """Send the request and wait for the response headers."""
        assert self._session is not None, "Upstream.start() was not awaited"
        body = ureq.body() if callable(ureq.body) else ureq.body
        headers = ureq.headers
        if isinstance(body, (bytes, bytearray)) and len(body) > _PACED_BODY:
            headers = {**headers, "Content-Length": str(len(body))}  # sent as it is, not chunked
            body = _pieces(body)
        try:
            if stream:
                async with asyncio.timeout(self._t.first_byte):
                    resp = await self._session.request(
                        ureq.method, ureq.url, headers=headers, data=body,
                        timeout=self._stream, allow_redirects=False,
                    )
                return resp
            return await self._session.request(
                ureq.method, ureq.url, headers=headers, data=body,
                timeout=self._unary, allow_redirects=False,
            )
        except asyncio.TimeoutError:
            raise UpstreamFailure("upstream sent no response in time", kind="timeout", status=504) from None
        except aiohttp.ClientConnectorError:
            raise UpstreamFailure("could not connect to upstream", kind="connect", status=502) from None
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamFailure(f"upstream connection failed ({type(e).__name__})", kind="connect", status=502) from None

    async def read_body(self, resp: UpstreamResponse) -> bytes:
        """A whole unary body, bounded."""
        if resp.content_length is not None and resp.content_length > self._max_response:
            resp.close()
            raise UpstreamFailure("upstream response too large", kind="server", status=502)
        try:
            if resp.content_length is not None:
                return await resp.read()
            parts: list[bytes] = []
            size = 0
            async for piece in resp.content.iter_any():
                size += len(piece)
                if size > self._max_response:
                    resp.close()
                    raise UpstreamFailure("upstream response too large", kind="server", status=502)
                parts.append(piece)
            return b"".join(parts)
        except READ_ERRORS:
            resp.close()
            raise UpstreamFailure("upstream response was cut off", kind="server", status=502) from None

    async def read_error(self, resp: UpstreamResponse) -> bytes:
        try:
            return await resp.content.read(MAX_ERROR_BODY)
        except READ_ERRORS:
            return b""
        finally:
            resp.release()

    async def call(self, ureq: UpstreamRequest, timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        """A small unary call with a total deadline of its own (health probes, webhooks): status, headers and
        at most 64 KiB of body. UpstreamFailure (connect, timeout) when no answer came."""
        assert self._session is not None, "Upstream.start() was not awaited"
        body = ureq.body() if callable(ureq.body) else ureq.body
        try:
            async with asyncio.timeout(timeout):
                async with self._session.request(
                    ureq.method, ureq.url, headers=ureq.headers, data=body, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, self._t.connect)),
                ) as resp:
                    return resp.status, resp.headers, await resp.content.read(MAX_ERROR_BODY)
        except asyncio.TimeoutError:
            raise UpstreamFailure("no answer in time", kind="timeout", status=504) from None
        except aiohttp.ClientConnectorError:
            raise UpstreamFailure("could not connect", kind="connect", status=502) from None
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamFailure(f"connection failed ({type(e).__name__})", kind="connect", status=502) from None

    @staticmethod
    def chunks(resp: UpstreamResponse) -> AsyncIterator[bytes]:
        return resp.content.iter_any()
