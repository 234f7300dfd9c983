"""Upstream calls: the HTTP/1.1 pool, aiohttp's client (its only user here), the timeouts, and failure
classification.

Direct calls (requests, health probes, webhooks) go through relay/http1.py (keep-alive connections, a third
of aiohttp's client CPU per call); calls through a channel's egress proxy through aiohttp's client. Both
answer with an UpstreamResponse, read the same way.

Timeouts differ by call kind. A unary call has a deadline for its response headers and one for its body
(`unary` each). A stream has a first-byte deadline (until response headers) and an idle deadline between
chunks, never a total one: a long answer may stream for many minutes. They are kept by one timer for all
calls (relay/deadlines.py), not by aiohttp's timer per call and per chunk; only a new connection's
`connect` deadline is aiohttp's. Errors never carry the upstream URL or key; they name what failed, not
where.

A request may name an HTTP proxy (its channel's `proxy`): the connection then goes through it (CONNECT for
https upstreams, absolute-URI requests for http ones), with the URL's credentials sent as
Proxy-Authorization. `env` takes the proxy from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read once per upstream
host. A proxy that cannot be reached or refuses is a connect failure, like an upstream that cannot be.
Proxy URLs hold secrets: no error or log line here names one (aiohttp's own exception texts do, so they
are never passed on).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
from yarl import URL

from . import http1
from .config import TimeoutConfig
from .deadlines import Deadline, Deadlines
from .errors import UpstreamFailure
from .types import UpstreamRequest

__all__ = ["READ_ERRORS", "Chunks", "Upstream", "UpstreamResponse"]


class UpstreamResponse(Protocol):
    status: int
    content_length: int | None

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""

    async def piece(self) -> bytes:
        """The next piece of the body (b"" at its end)."""

    async def read(self, limit: int | None = None) -> bytes: ...
    def close(self) -> None: ...
    def release(self) -> None: ...


class _Proxied:
    """A response of aiohttp's client (a call through an egress proxy), read like http1.Response."""

    __slots__ = ("_r", "content_length", "headers", "status")

    def __init__(self, r: aiohttp.ClientResponse) -> None:
        self._r, self.status, self.headers, self.content_length = r, r.status, r.headers, r.content_length

    async def piece(self) -> bytes:
        return await self._r.content.readany()

    async def read(self, limit: int | None = None) -> bytes:
        return await (self._r.read() if limit is None else self._r.content.read(limit))

    def close(self) -> None:
        self._r.close()

    def release(self) -> None:
        self._r.release()


# What reading an upstream body can raise: a reset, a cut chunked body, an idle timeout.
READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, http1.HttpError)

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

# (proxy URL, or "env" + scheme://host) -> where to connect and the credentials; a handful of channels and
# hosts, bounded anyway.
_ProxyTo = tuple[URL | None, str | None]
_PROXY_CACHE_MAX = 1024


class Upstream:
    def __init__(self, timeouts: TimeoutConfig, max_response_bytes: int = 128 * 1024 * 1024) -> None:
        self._t = timeouts
        self._max_response = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        self._connect = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
        self.deadlines = Deadlines(min(0.05, timeouts.connect / 4))
        self._proxies: dict[str, _ProxyTo] = {}
        self._pool = http1.Pool(keepalive=30.0)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            # cookies an upstream sets belong to no one here: never stored, never sent on another account's call
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "relay", "Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        self._pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(self, ureq: UpstreamRequest, stream: bool) -> UpstreamResponse:
        """Send the request and wait for the response headers."""
        headers: Mapping[str, str] = ureq.headers
        body = ureq.body() if callable(ureq.body) else ureq.body
        if isinstance(body, (bytes, bytearray)) and len(body) > _PACED_BODY:
            headers = {**headers, "Content-Length": str(len(body))}  # sent as it is, not chunked
            body = _pieces(body)
        if ureq.proxy:
            return await self._open_proxied(ureq, headers, body, stream)
        with _direct_failures("upstream sent no response in time", "could not connect to upstream", "upstream connection"):
            with self.deadlines.within(self._t.first_byte if stream else self._t.unary):
                return await self._pool.request(ureq.method, ureq.url, headers, body, self._t.connect)

    async def _open_proxied(
        self, ureq: UpstreamRequest, headers: Mapping[str, str], body: bytes | AsyncIterator[bytes] | None, stream: bool,
    ) -> UpstreamResponse:
        assert self._session is not None, "Upstream.start() was not awaited"
        headers, proxy, proxy_headers = self._route(ureq, headers)
        with _proxied_failures("upstream sent no response in time", "could not connect to upstream", "upstream connection"):
            with self.deadlines.within(self._t.first_byte if stream else self._t.unary):
                resp = await self._session.request(
                    ureq.method, ureq.url, headers=headers, data=body,
                    timeout=self._connect, allow_redirects=False, proxy=proxy, proxy_headers=proxy_headers,
                )
        if resp.status == 407 and proxy is not None:  # an http upstream's request, refused by the proxy itself
            resp.close()
            raise _proxy_failure("the channel's proxy refused the connection (HTTP 407)")
        return _Proxied(resp)

    def _route(
        self, ureq: UpstreamRequest, headers: Mapping[str, str] | None = None,
    ) -> tuple[Mapping[str, str], URL | None, dict[str, str] | None]:
        """The request's headers, the proxy to go through (None: direct) and the headers of its CONNECT."""
        headers = ureq.headers if headers is None else headers
        proxy, proxy_auth = self._proxy_for(ureq) if ureq.proxy else (None, None)
        proxy_headers = None
        if proxy_auth is not None:
            # CONNECT (https upstreams) carries proxy_headers; an http upstream's request goes to the proxy
            # itself, so the header rides on it (aiohttp sends it to the proxy only, never past it)
            proxy_headers = {"Proxy-Authorization": proxy_auth}
            if not ureq.url.startswith("https:"):
                headers = {**headers, "Proxy-Authorization": proxy_auth}
        return headers, proxy, proxy_headers

    def _proxy_for(self, ureq: UpstreamRequest) -> _ProxyTo:
        """The proxy to connect through and its Proxy-Authorization value (kept apart from the URL: aiohttp's
        exception texts show the proxy URL they were given)."""
        spec = ureq.proxy or ""
        url = URL(ureq.url)
        entry = f"env {url.scheme}://{url.host}" if spec == "env" else spec
        got = self._proxies.get(entry)
        if got is None:
            proxy: URL | None = URL(spec) if spec != "env" else _env_proxy(url)
            auth = None
            if proxy is not None and proxy.user is not None:
                auth = aiohttp.encode_basic_auth(proxy.user, proxy.password or "")
                proxy = proxy.with_user(None)
            got = (proxy, auth)
            if len(self._proxies) >= _PROXY_CACHE_MAX:
                self._proxies.clear()
            self._proxies[entry] = got
        return got

    async def read_body(self, resp: UpstreamResponse) -> bytes:
        """A whole unary body, bounded."""
        if resp.content_length is not None and resp.content_length > self._max_response:
            resp.close()
            raise UpstreamFailure("upstream response too large", kind="server", status=502)
        try:
            with self.deadlines.within(self._t.unary):
                parts: list[bytes] = []
                size = 0
                while piece := await resp.piece():
                    size += len(piece)
                    if size > self._max_response:
                        resp.close()
                        raise UpstreamFailure("upstream response too large", kind="server", status=502)
                    parts.append(piece)
                return parts[0] if len(parts) == 1 else b"".join(parts)
        except READ_ERRORS:
            resp.close()
            raise UpstreamFailure("upstream response was cut off", kind="server", status=502) from None

    async def read_error(self, resp: UpstreamResponse) -> bytes:
        try:
            with self.deadlines.within(self._t.first_byte):
                return await resp.read(MAX_ERROR_BODY)
        except READ_ERRORS:
            return b""
        finally:
            resp.release()

    async def call(self, ureq: UpstreamRequest, timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        """A small unary call with a total deadline of its own (health probes, webhooks): status, headers and
        at most 64 KiB of body. UpstreamFailure (connect, timeout) when no answer came."""
        body = ureq.body() if callable(ureq.body) else ureq.body
        if not ureq.proxy:  # the same client as the traffic it checks
            with _direct_failures("no answer in time", "could not connect", "connection"):
                async with asyncio.timeout(timeout):
                    resp = await self._pool.request(ureq.method, ureq.url, ureq.headers, body, min(timeout, self._t.connect))
                    try:
                        return resp.status, resp.headers, await resp.read(MAX_ERROR_BODY)
                    finally:
                        resp.close()
        assert self._session is not None, "Upstream.start() was not awaited"
        headers, proxy, proxy_headers = self._route(ureq)
        with _proxied_failures("no answer in time", "could not connect", "connection"):
            async with asyncio.timeout(timeout):
                async with self._session.request(
                    ureq.method, ureq.url, headers=headers, data=body, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, self._t.connect)),
                    proxy=proxy, proxy_headers=proxy_headers,
                ) as proxied:
                    return proxied.status, proxied.headers, await proxied.content.read(MAX_ERROR_BODY)

    def chunks(self, resp: UpstreamResponse) -> Chunks:
        """The body as it arrives, each piece within `idle` of the last (past it the response is closed and
        the read under way fails as a cut body). Close it when done."""
        return Chunks(resp, self.deadlines, self._t.idle)


class Chunks:
    __slots__ = ("_deadline", "_idle", "_resp", "_stalled")

    def __init__(self, resp: UpstreamResponse, deadlines: Deadlines, idle: float) -> None:
        self._resp, self._idle = resp, idle
        self._stalled = False
        self._deadline: Deadline = deadlines.arm(idle, self._stall)

    def _stall(self) -> None:
        self._stalled = True
        self._resp.close()  # the read under way fails

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            piece = await self._resp.piece()
        except BaseException:
            self.close()
            if self._stalled:
                raise TimeoutError("no data within the idle deadline") from None
            raise
        if not piece:
            self.close()
            raise StopAsyncIteration
        self._deadline.extend(self._idle)
        return piece

    def close(self) -> None:
        """Done with the body: the deadline is disarmed and the response closed."""
        self._deadline.disarm()
        self._resp.close()


@contextmanager
def _direct_failures(no_answer: str, no_connection: str, connection: str) -> Iterator[None]:
    """A direct call's failures as UpstreamFailure (their texts never name the URL)."""
    try:
        yield
    except TimeoutError:
        raise UpstreamFailure(no_answer, kind="timeout", status=504) from None
    except http1.ConnectFailed:
        raise UpstreamFailure(no_connection, kind="connect", status=502) from None
    except (http1.HttpError, ConnectionError) as e:
        raise UpstreamFailure(f"{connection} failed ({type(e).__name__})", kind="connect", status=502) from None


@contextmanager
def _proxied_failures(no_answer: str, no_connection: str, connection: str) -> Iterator[None]:
    """A call through aiohttp's client (an egress proxy): its failures as UpstreamFailure. aiohttp's own
    exception texts name the proxy URL they were given, so none is passed on."""
    try:
        yield
    except TimeoutError:
        raise UpstreamFailure(no_answer, kind="timeout", status=504) from None
    except aiohttp.ClientProxyConnectionError:
        raise _proxy_failure("could not connect to the channel's proxy") from None
    except aiohttp.ClientHttpProxyError as e:
        raise _proxy_failure(f"the channel's proxy refused the connection (HTTP {e.status})") from None
    except aiohttp.ClientConnectorError:
        raise UpstreamFailure(no_connection, kind="connect", status=502) from None
    except (aiohttp.ClientError, ConnectionError) as e:
        raise UpstreamFailure(f"{connection} failed ({type(e).__name__})", kind="connect", status=502) from None


def _env_proxy(url: URL) -> URL | None:
    """HTTPS_PROXY / HTTP_PROXY for the URL's scheme, unless NO_PROXY names its host (None: direct)."""
    if url.host is None or proxy_bypass_environment(url.host):
        return None
    found = getproxies_environment().get(url.scheme)
    return URL(found) if found else None


def _proxy_failure(reason: str) -> UpstreamFailure:
    failure = UpstreamFailure(reason, kind="connect", status=502)
    failure.channel_wide = True
    return failure
