"""The HTTP server's own error answers: for requests that are not valid HTTP, which never reach a handler.

aiohttp answers those with a plain-text page and logs each one at ERROR with its traceback, whose
exception text quotes the offending request bytes (an Authorization header, a prompt). Here they get
OpenAI's error JSON and at most one log line every 10 seconds, naming the error's class and the
client address only: an unauthenticated client sending garbage cannot fill the log, nor put its bytes in it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .errors import InvalidRequest, RelayError, error_response
from .quiet_log import QuietLog

__all__ = ["RelayRunner"]

log = logging.getLogger("relay.http")


_QUIET = QuietLog(log, 10.0)


class _Handler(RequestHandler):
    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None,
    ) -> web.StreamResponse:
        _QUIET.warning("answered %d to a malformed request from %s (%s)", status, request.remote or "?",
                       type(exc).__name__ if exc is not None else "no detail")
        if request.writer.output_size > 0:  # a response was under way: nothing more can be said on it
            raise ConnectionError("response already started; cannot send the error")
        err: RelayError
        if status < 500:
            err = InvalidRequest(
                "The request is not valid HTTP (its request line or headers could not be read).",
                status=status, code="malformed_request",
            )
        else:
            err = RelayError("The relay failed to handle the request.", status=status)
        resp = error_response(err)
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class RelayRunner(web.AppRunner):
    """web.AppRunner whose connections answer unreadable requests with the relay's own error JSON."""

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _Server(
            base.request_handler, request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs,  # noqa: SLF001
        )
