"""The access log: one line per request, on by default (`access_log: text | json | off`).

A line holds when, which request, whose key (its display prefix), from where, what was asked, and how it
ended: never a body, never a whole key, never a query string (Gemini clients may send `?key=`). The proxy
notes what only it knows (model, end reason, time to first token) on the request; the app's middleware
writes the line when the handler is done, for every request, relayed or refused.

A line is on the path of every request, so it is cheap: formatted once into one string, timestamp included
(formatted once a second, `LineFormatter`), and written by the one handler `relay serve` sets up, under its
lock, as it would write the record: the same bytes without logging's record, filters and formatting per
line. Lines are gathered for at most 50 ms and go out in one write (one system call for all of them, not
one each); the app's cleanup writes what is left, so a stop loses none (a kill -9, at most those 50 ms).
When logging is set up otherwise (more handlers, filters: a test's log capture), the line goes through
logging as a ready record instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

__all__ = ["ACCESS", "LOG_FORMAT", "AccessLog", "AccessNote", "LineFormatter"]


@dataclass(slots=True)
class AccessNote:
    key_prefix: str = ""
    model: str = ""
    end_reason: str = ""
    ttft: float | None = None


ACCESS = web.RequestKey("access", AccessNote)

_NAME = "relay.access"
_GATHER_SECONDS = 0.05
log = logging.getLogger(_NAME)
_FILE = __file__


class AccessLog:
    __slots__ = ("_handler", "_pending", "format")

    def __init__(self, fmt: str) -> None:
        self.format = fmt  # text | json | off
        self._pending: list[str] = []  # lines of the last few milliseconds, written together
        self._handler: logging.StreamHandler | None = None  # type: ignore[type-arg]
        if fmt != "off":
            log.setLevel(logging.INFO)  # whatever log_level says: the access log has its own switch

    def write(self, request: web.Request, request_id: str, status: int, started: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        note = request.get(ACCESS) or _NONE
        latency = (time.monotonic() - started) * 1000
        ttft = None if note.ttft is None else round(note.ttft * 1000, 1)
        path = request.path
        if len(path) > 200:
            path = path[:200] + "..."
        if self.format == "json":
            line = orjson.dumps({
                "ts": round(time.time(), 3), "request_id": request_id, "key": note.key_prefix or None,
                "client": request.remote, "method": request.method, "path": path, "model": note.model or None,
                "status": status, "end": note.end_reason or None, "latency_ms": round(latency, 1), "ttft_ms": ttft,
            }).decode()
        else:
            line = "%s %s %s %s %s model=%s status=%d end=%s latency_ms=%.1f ttft_ms=%s" % (
                request_id, note.key_prefix or "-", request.remote or "-", request.method, path, note.model or "-",
                status, note.end_reason or "-", latency, "-" if ttft is None else ttft,
            )
        handler = _only_handler()
        if handler is not None:  # logging as the relay sets it up: the line the handler would write, written
            text = "%s INFO relay.access: %s\n" % (handler.formatter.stamp(time.time()), line)  # type: ignore[union-attr]
            self._handler = handler
            self._pending.append(text)
            if len(self._pending) == 1:  # the first of a batch: its write is due in 50 ms
                try:
                    asyncio.get_running_loop().call_later(_GATHER_SECONDS, self.flush)
                except RuntimeError:  # no loop (a caller outside the server): at once
                    self.flush()
            return
        # the record log.info would make, less its caller lookup (a walk up the stack: no format shows it)
        log.handle(log.makeRecord(_NAME, logging.INFO, _FILE, 0, line, (), None))

    def flush(self) -> None:
        """Write the lines gathered so far."""
        handler, text = self._handler, "".join(self._pending)
        self._pending.clear()
        if handler is None or not text:
            return
        try:
            with handler.lock:  # type: ignore[union-attr]
                handler.stream.write(text)
                handler.stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: the handler reports it
            handler.handleError(log.makeRecord(_NAME, logging.INFO, _FILE, 0, text.rstrip("\n"), (), None))


def _only_handler() -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """The one handler a line reaches when logging is as `relay serve` sets it up (one StreamHandler on the
    root logger with a LineFormatter of the relay's format, no filters on the way), else None: then the line
    goes through logging itself (other handlers, filters, a test's log capture see it as any record)."""
    c: logging.Logger | None = log
    while c is not None and not c.handlers and not c.filters and c.propagate:
        c = c.parent
    if c is None or c.parent is not None or c.filters or len(c.handlers) != 1:
        return None  # a handler or filter below the root, or not exactly one handler on it
    h = c.handlers[0]
    f = h.formatter
    if (type(h) is not logging.StreamHandler or h.filters or h.level > logging.INFO or type(f) is not LineFormatter
            or f._fmt != LOG_FORMAT):  # noqa: SLF001
        return None
    return h


# the relay's log line (relay.app.configure_logging)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LineFormatter(logging.Formatter):
    """logging.Formatter with the default timestamp (`2026-01-31 12:00:00,123`) formatted once a second:
    the same lines, without a localtime() and strftime() per line."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None or self.datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """The default timestamp of a record made at `created` (time.time())."""
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        # logging.Formatter.default_msec_format, with the milliseconds LogRecord computes
        return "%s,%03d" % (self._stamp, int((created - second) * 1000))


_NONE = AccessNote()
