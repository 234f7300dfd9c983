"""The only user of aiohttp's client: one pooled session, the timeouts, and failure classification.

Timeouts differ by call kind. A unary call has a total deadline. A stream has a first-byte deadline (until
response headers) and an idle deadline between chunks, never a total one: a long answer may stream for
many minutes. Errors never carry the upstream URL or key; they name what failed, not where.

A request may name an HTTP proxy (its channel's `proxy`): the connection then goes through it (CONNECT for
https upstreams, absolute-URI requests for http ones), with the URL's credentials sent as
Proxy-Authorization. `env` takes the proxy from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read once per upstream
host. A proxy that cannot be reached or refuses is a connect failure, like an upstream that cannot be.
Proxy URLs hold secrets: no error or log line here names one (aiohttp's own exception texts do, so they
are never passed on).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
from yarl import URL

from .config import TimeoutConfig
from .errors import UpstreamFailure
from .types import UpstreamRequest

__all__ = ["READ_ERRORS", "Upstream", "UpstreamResponse"]

UpstreamResponse = aiohttp.ClientResponse

# What reading an upstream body can raise: a reset, a cut chunked body, an idle timeout.
READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)

# 64 KiB: enough for any provider's error document; more is not worth holding.
MAX_ERROR_BODY = 64 * 1024

# (proxy URL, or "env" + scheme://host) -> where to connect and the credentials; a handful of channels and
# hosts, bounded anyway.
_ProxyTo = tuple[URL | None, str | None]
_PROXY_CACHE_MAX = 1024


class Upstream:
    def __init__(self, timeouts: TimeoutConfig, max_response_bytes: int = 128 * 1024 * 1024) -> None:
        self._t = timeouts
        self._max_response = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        self._unary = aiohttp.ClientTimeout(total=timeouts.unary, sock_connect=timeouts.connect)
        # sock_read is the idle deadline between chunks (it also bounds the wait for headers, so the
        # first-byte deadline in effect is min(first_byte, idle))
        self._stream = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.idle)
        self._proxies: dict[str, _ProxyTo] = {}

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
        headers: Mapping[str, str] = ureq.headers
        proxy, proxy_auth = self._proxy_for(ureq) if ureq.proxy else (None, None)
        proxy_headers = None
        if proxy_auth is not None:
            # CONNECT (https upstreams) carries proxy_headers; an http upstream's request goes to the proxy
            # itself, so the header rides on it (aiohttp sends it to the proxy only, never past it)
            proxy_headers = {"Proxy-Authorization": proxy_auth}
            if not ureq.url.startswith("https:"):
                headers = {**headers, "Proxy-Authorization": proxy_auth}
        body = ureq.body() if callable(ureq.body) else ureq.body
        try:
            if stream:
                async with asyncio.timeout(self._t.first_byte):
                    resp = await self._session.request(
                        ureq.method, ureq.url, headers=headers, data=body,
                        timeout=self._stream, allow_redirects=False, proxy=proxy, proxy_headers=proxy_headers,
                    )
            else:
                resp = await self._session.request(
                    ureq.method, ureq.url, headers=headers, data=body,
                    timeout=self._unary, allow_redirects=False, proxy=proxy, proxy_headers=proxy_headers,
                )
        except asyncio.TimeoutError:
            raise UpstreamFailure("upstream sent no response in time", kind="timeout", status=504) from None
        except aiohttp.ClientProxyConnectionError:
            raise _proxy_failure("could not connect to the channel's proxy") from None
        except aiohttp.ClientHttpProxyError as e:
            raise _proxy_failure(f"the channel's proxy refused the connection (HTTP {e.status})") from None
        except aiohttp.ClientConnectorError:
            raise UpstreamFailure("could not connect to upstream", kind="connect", status=502) from None
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamFailure(f"upstream connection failed ({type(e).__name__})", kind="connect", status=502) from None
        if resp.status == 407 and proxy is not None:  # an http upstream's request, refused by the proxy itself
            resp.close()
            raise _proxy_failure("the channel's proxy refused the connection (HTTP 407)")
        return resp

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

    @staticmethod
    def chunks(resp: UpstreamResponse) -> AsyncIterator[bytes]:
        return resp.content.iter_any()


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
