"""The relayed answer as the client receives it: a stream (held until its first whole event, so failover is
still possible, then pumped through as it arrives) or a binary body piped through. A part of relay.proxy's
pipeline: the Proxy class holds the state these methods use.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .adapters.base import StreamHandler
from .bindings import ResponseBindings
from .books import Trace
from .errors import UpstreamFailure, stream_error_event
from .metrics import Metrics
from .router import Account, Router
from .sse import EventTooLarge
from .types import RelayRequest
from .upstream import READ_ERRORS, Chunks, Upstream, UpstreamResponse

__all__ = ["SSE_HEADERS", "StreamReplies"]

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


class StreamReplies:
    _upstream: Upstream
    _router: Router
    _metrics: Metrics
    _bindings: ResponseBindings
    _draining: bool

    async def _stream(
        self, request: web.Request, req: RelayRequest, trace: Trace, handler: StreamHandler,
        resp: UpstreamResponse, account: Account,
    ) -> web.StreamResponse:
        chunks = self._upstream.chunks(resp)
        try:
            # Hold the client's response until the upstream produced a first whole event: until then a
            # failure can still move to another account. (Not longer: a reasoning model may send its role
            # preamble and then think for minutes, and a client waiting for headers would give up.)
            first = b""
            try:
                while not first:
                    first = handler.feed(await anext(chunks))
            except StopAsyncIteration:
                raise UpstreamFailure("stream ended before its first event", kind="server") from None
            except (*READ_ERRORS, EventTooLarge):
                raise UpstreamFailure("stream failed before its first event", kind="server") from None
            self._router.succeeded(account)
            # a handler whose client format is not SSE names its own headers (Gemini's JSON-array stream)
            out = web.StreamResponse(status=resp.status, headers=getattr(handler, "headers", None) or SSE_HEADERS)
            await out.prepare(request)
            trace.status = resp.status
            trace.ttft = time.monotonic() - req.started
            self._metrics.active_streams.inc()
            try:
                self._bind(handler, req, account)
                await out.write(first)
                await self._pump(chunks, handler, out, trace, req.dialect)
            except ConnectionError:
                trace.end_reason = "client_disconnected"
            except asyncio.CancelledError:
                if not self._draining:
                    raise
                trace.end_reason = "shutdown"
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                await _try_write(
                    out, _error_event(handler, "The relay is shutting down.", "server_shutdown", req.dialect)
                )
            finally:
                self._metrics.active_streams.dec()
                self._bind(handler, req, account)
                trace.usage = handler.usage
                if handler.usage is None:
                    trace.completion_tokens = handler.completion.tokens(req.model)
            return out
        finally:
            chunks.close()

    async def _pump(
        self, chunks: Chunks, handler: StreamHandler, out: web.StreamResponse, trace: Trace, dialect: str
    ) -> None:
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except READ_ERRORS as e:
                trace.end_reason = "upstream_error"
                reason = "stalled" if isinstance(e, asyncio.TimeoutError) else "broke off"
                await out.write(_error_event(handler, f"The upstream stream {reason} before it finished.", dialect=dialect))
                return
            try:
                data = handler.feed(chunk)
            except EventTooLarge:
                trace.end_reason = "upstream_error"
                await out.write(_error_event(handler, "The upstream sent an event over 1 MiB.", dialect=dialect))
                return
            if data:
                await out.write(data)
        tail = handler.close()
        if not handler.done:
            trace.end_reason = "upstream_error"
            await out.write(_error_event(handler, "The upstream stream ended before it finished.", dialect=dialect))
        elif tail:
            await out.write(tail)

    async def _pipe(
        self, request: web.Request, trace: Trace, resp: UpstreamResponse, account: Account, content_type: str
    ) -> web.StreamResponse:
        """Binary bodies (speech audio): streamed through as they arrive."""
        chunks = self._upstream.chunks(resp)
        try:
            out = web.StreamResponse(status=resp.status, headers={"Content-Type": content_type})
            if resp.content_length is not None:
                out.content_length = resp.content_length
            self._router.succeeded(account)
            await out.prepare(request)
            trace.status = resp.status
            try:
                async for chunk in chunks:
                    await out.write(chunk)
            except ConnectionError:
                trace.end_reason = "client_disconnected"
            except READ_ERRORS:
                trace.end_reason = "upstream_error"
                if request.transport is not None:
                    request.transport.close()  # a cut body must look cut to the client, not complete
            return out
        finally:
            chunks.close()

    def _bind(self, handler: StreamHandler, req: RelayRequest, account: Account) -> None:
        """Bind the upstream's state id (a Responses API response) to the account, once it is known."""
        sid = getattr(handler, "response_id", None)
        if sid:
            self._bindings.bind(sid, account.uid, req.key.id)
            handler.response_id = None  # type: ignore[attr-defined] # bound: not again


def _error_event(handler: StreamHandler, message: str, code: str = "upstream_error", dialect: str = "openai") -> bytes:
    """The event that ends a broken stream: the handler's own where its protocol numbers events."""
    frame = getattr(handler, "error_frame", None)
    return frame(message, code) if frame is not None else stream_error_event(message, code=code, dialect=dialect)


async def _try_write(out: web.StreamResponse, data: bytes) -> None:
    try:
        await out.write(data)
    except (ConnectionError, RuntimeError):
        pass
