"""One error tree, rendered in OpenAI's error shape by one function.

    RelayError                      an answer the relay gives itself: status + OpenAI error body
     +-- InvalidRequest             400 invalid_request_error
     +-- Unauthorized               401 invalid_api_key
     +-- PermissionDenied           403
     +-- NotFound                   404 model_not_found / not_found
     +-- PayloadTooLarge            413
     +-- RateLimited                429 rate_limit_exceeded (+ Retry-After)
     +-- UpstreamUnavailable        502 / 503 / 504 after every attempt failed
    UpstreamFailure                 one attempt failed before any byte reached the client (proxy decides)

Clients of the Anthropic-native endpoint (/v1/messages) get the same errors in Anthropic's shape
(`{"type": "error", "error": {"type", "message"}}`, its error types by status): `render_error(err, dialect)`
and `stream_error_event(..., dialect=...)` pick the shape. Clients of the Gemini-native routes (/v1beta/*) get
Google's shape (`{"error": {"code", "message", "status"}}`, its status names by HTTP status).

`UpstreamFailure` never reaches a client as such: the proxy turns the last one into an `UpstreamUnavailable`
or, for a non-retryable upstream answer, forwards the upstream's own status and body.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

__all__ = [
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RelayError",
    "Unauthorized",
    "UpstreamFailure",
    "UpstreamUnavailable",
    "anthropic_error_body",
    "anthropic_error_type",
    "error_body",
    "error_response",
    "google_error_body",
    "google_status",
    "render_error",
    "stream_error_event",
]


class RelayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    # None: let the client decide; False: tell the SDK not to retry (x-should-retry: false).
    should_retry: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers = dict(headers or {})


class InvalidRequest(RelayError):
    status = 400
    type = "invalid_request_error"
    should_retry = False


class Unauthorized(RelayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    should_retry = False


class PermissionDenied(RelayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"
    should_retry = False


class NotFound(RelayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    should_retry = False


class PayloadTooLarge(RelayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    should_retry = False


class RateLimited(RelayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class UpstreamUnavailable(RelayError):
    status = 503
    type = "server_error"
    code = "upstream_unavailable"


class UpstreamFailure(Exception):
    """One failed attempt, classified for the router and the proxy.

    kind: connect | timeout | server (5xx, 408, a stream cut before its first byte) | rate_limited (429)
    | auth (401/403: the account's credential was refused) | quota (an answer saying the account's quota or
    credit is spent: relay.health.quota_failure; it goes out of rotation and the request moves on) | client (any other 4xx: the request itself is
    at fault, so it is not retried and the upstream's answer goes back to the client as it is).
    """

    RETRYABLE = frozenset({"connect", "timeout", "server", "rate_limited", "auth", "quota"})
    # True when the failure is the channel's, not the account's (its egress proxy failed): the channel's
    # other accounts would fail the same way, so failover moves to another channel.
    channel_wide = False

    def __init__(
        self,
        reason: str,
        *,
        kind: str,
        status: int = 502,
        retry_after: float | None = None,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.content_type = content_type

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE


def error_body(err: RelayError) -> bytes:
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


def error_response(err: RelayError) -> web.Response:
    headers = dict(err.headers)
    if err.should_retry is False:
        headers["x-should-retry"] = "false"
    return web.Response(
        status=err.status, body=error_body(err), content_type="application/json", headers=headers
    )


def stream_error_event(
    message: str, code: str = "upstream_error", type_: str = "server_error", dialect: str = "openai"
) -> bytes:
    """An SSE error event in the client's dialect: its SDK raises on it instead of keeping a cut answer."""
    if dialect == "anthropic":
        return b"event: error\ndata: " + anthropic_error_body(500, message) + b"\n\n"
    if dialect == "gemini":
        return b"data: " + google_error_body(500, message) + b"\r\n\r\n"
    payload = orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
    return b"data: " + payload + b"\n\n"


# Anthropic's error type for each status it documents; any other 4xx is invalid_request_error, 5xx api_error.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})


# Google's canonical status name for each HTTP status (google.rpc.Code as its REST APIs map it).
_GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def google_status(status: int) -> str:
    return _GOOGLE_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def google_error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"code": status, "message": message, "status": google_status(status)}})


def render_error(err: RelayError, dialect: str = "openai") -> web.Response:
    """The error response in the client's dialect: OpenAI's shape, Anthropic's for /v1/messages, Google's
    for /v1beta."""
    if dialect not in ("anthropic", "gemini"):
        return error_response(err)
    headers = dict(err.headers)
    if err.should_retry is False:
        headers["x-should-retry"] = "false"
    body = anthropic_error_body(err.status, err.message) if dialect == "anthropic" else google_error_body(
        err.status, err.message)
    return web.Response(status=err.status, body=body, content_type="application/json", headers=headers)
