"""What every request goes through: its id, the client's address behind trusted proxies, CORS, errors
rendered in the client's dialect, auth failures counted, and the access log line."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import web_api
from .access_log import AccessLog
from .client_addr import ClientAddress
from .errors import InvalidRequest, NotFound, RelayError, Unauthorized, error_response, render_error
from .metrics import Metrics
from .proxy import RATE_LIMIT_HEADERS
from .quiet_log import QuietLog
from .web_input import BodyBudget

__all__ = ["OPS_PATHS", "errors_middleware", "response_headers"]

log = logging.getLogger("relay")

_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Api-Key, OpenAI-Beta, X-Stainless-*, *"
_CORS_EXPOSE = (
    "x-request-id, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, retry-after"
)
OPS_PATHS = ("/metrics", "/healthz", "/status", "/status.json")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Reasons an auth failure is counted under (a bounded label set: anything else is "other").
_AUTH_REASONS = frozenset({
    "missing_api_key", "invalid_api_key", "key_revoked", "key_expired", "ip_not_allowed", "invalid_metrics_token",
})


def errors_middleware(client: ClientAddress, metrics: Metrics, access: AccessLog, budget: BodyBudget) -> Middleware:
    # Request ids: a random prefix per process and a counter, so ids are unique across workers and
    # restarts and grow in order (cheap to index, no system call per request).
    prefix = "req_" + os.urandom(6).hex()
    counter = itertools.count()
    auth_log = QuietLog(logging.getLogger("relay.auth"), 10.0)
    logging_on = access.format != "off"

    def auth_failed(request: web.Request, e: RelayError) -> None:
        admin = request.path.startswith("/admin")
        reason = "admin" if admin else (e.code if e.code in _AUTH_REASONS else "other")
        metrics.auth_failure(reason)
        auth_log.warning("refused %s %s from %s: %s", request.method, request.path[:100], request.remote, reason)

    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RelayError as e:
            if isinstance(e, Unauthorized) or e.code == "ip_not_allowed":
                auth_failed(request, e)
            return render_error(e, request.get(web_api.DIALECT, "openai"))
        except web.HTTPNotFound:
            return error_response(NotFound(f"Unknown path {request.path}.", code="unknown_url"))
        except web.HTTPMethodNotAllowed as e:
            allowed = ", ".join(sorted(e.allowed_methods))
            return error_response(
                InvalidRequest(
                    f"{request.method} is not allowed on {request.path}.", status=405, code="method_not_allowed",
                    headers={"Allow": allowed},
                )
            )
        except (web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - the one place an unexpected error becomes a 500
            log.error("unhandled %s on %s %s", type(e).__name__, request.method, request.path, exc_info=e)
            return render_error(RelayError("The relay failed to handle the request."), request.get(web_api.DIALECT, "openai"))

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        if client:  # behind a trusted reverse proxy: the address it forwards for
            addr = client.of(request.remote, request.headers)
            if addr is not None and addr != request.remote:
                request = request.clone(remote=addr)
        rid = request[web_api.REQUEST_ID] = f"{prefix}{next(counter):012x}"
        if request.method == "OPTIONS":  # CORS preflight: answered here, for every path, without a key
            return await _preflight(request)
        status = 499  # the client went away (the handler was cancelled) unless an answer says otherwise
        try:
            response = await answer(request, handler)
            status = response.status
            return response
        finally:
            budget.release(request)  # the body it read is no longer held
            if logging_on:
                access.write(request, rid, status, started)

    return middleware


async def _preflight(request: web.Request) -> web.Response:
    if request.path.startswith("/admin") or "Origin" not in request.headers:
        return error_response(InvalidRequest(f"OPTIONS is not allowed on {request.path}.", status=405, code="method_not_allowed"))
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", _CORS_ALLOW_HEADERS),
            "Access-Control-Max-Age": "86400",
        },
    )


def response_headers(origins: tuple[str, ...]) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    allow_any = "*" in origins

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        rid = request.get(web_api.REQUEST_ID)
        if rid:
            response.headers["x-request-id"] = rid
        limits = request.get(RATE_LIMIT_HEADERS)
        if limits:
            response.headers.update(limits)
        origin = request.headers.get("Origin")
        if not origin or request.path.startswith("/admin") or request.path in OPS_PATHS:
            return
        if allow_any:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        else:
            return
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE

    return on_prepare
