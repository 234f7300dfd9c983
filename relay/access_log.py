"""The access log: one line per request, on by default (`access_log: text | json | off`).

A line holds when, which request, whose key (its display prefix), from where, what was asked, and how it
ended: never a body, never a whole key, never a query string (Gemini clients may send `?key=`). The proxy
notes what only it knows (model, end reason, time to first token) on the request; the app's middleware
writes the line when the handler is done, for every request, relayed or refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

__all__ = ["ACCESS", "AccessLog", "AccessNote"]


@dataclass(slots=True)
class AccessNote:
    key_prefix: str = ""
    model: str = ""
    end_reason: str = ""
    ttft: float | None = None


ACCESS = web.RequestKey("access", AccessNote)

log = logging.getLogger("relay.access")


class AccessLog:
    __slots__ = ("format",)

    def __init__(self, fmt: str) -> None:
        self.format = fmt  # text | json | off
        if fmt != "off":
            log.setLevel(logging.INFO)  # whatever log_level says: the access log has its own switch

    def write(self, request: web.Request, request_id: str, status: int, started: float) -> None:
        note = request.get(ACCESS) or _NONE
        latency = (time.monotonic() - started) * 1000
        ttft = None if note.ttft is None else round(note.ttft * 1000, 1)
        path = request.path if len(request.path) <= 200 else request.path[:200] + "..."
        if self.format == "json":
            log.info("%s", orjson.dumps({
                "ts": round(time.time(), 3), "request_id": request_id, "key": note.key_prefix or None,
                "client": request.remote, "method": request.method, "path": path, "model": note.model or None,
                "status": status, "end": note.end_reason or None, "latency_ms": round(latency, 1), "ttft_ms": ttft,
            }).decode())
        else:
            log.info(
                "%s %s %s %s %s model=%s status=%d end=%s latency_ms=%.1f ttft_ms=%s", request_id,
                note.key_prefix or "-", request.remote or "-", request.method, path, note.model or "-", status,
                note.end_reason or "-", latency, "-" if ttft is None else ttft,
            )


_NONE = AccessNote()
