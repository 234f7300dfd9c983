"""Operations endpoints: /metrics (Prometheus text), /healthz, /status (the public status page) and
/status.json (its data).

None of them needs a key and none shows a secret: /status names public models only (channels and account
numbers too with `status.show_channels`), and is served from a cache a few seconds old.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import orjson
from aiohttp import web

from .errors import Unauthorized
from .metrics import CONTENT_TYPE, Metrics
from .router import Router
from .status_data import StatusBoard
from .status_page import render_status
from .store_api import Storage

__all__ = ["OpsDeps", "add_routes"]


class OpsDeps:
    def __init__(
        self, metrics: Metrics, router: Router, store: Storage, store_ok: Callable[[], bool], board: StatusBoard,
        metrics_token: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.metrics_token = metrics_token
        self.store_ok = store_ok
        self.router = router
        self.store = store
        self.board = board
        self.draining = False

    async def status_body(self, kind: str) -> bytes:
        """The page ("html") or its data ("json"), rendered once per computed document."""
        doc = await self.board.document()
        body = self.board.renders.get(kind)
        if body is None:
            if kind == "json":
                body = orjson.dumps(doc)
            else:
                body = render_status(doc, refresh=max(2, min(30, self.board.cfg.bucket)))
            self.board.renders[kind] = body
        return body


# Public and cacheable by a reverse proxy for as long as the relay itself caches it.
def _cache_headers(deps: OpsDeps) -> dict[str, str]:
    return {"Cache-Control": f"public, max-age={int(deps.board.ttl)}"}


def add_routes(app: web.Application, deps: OpsDeps) -> None:
    async def metrics(request: web.Request) -> web.Response:
        if deps.metrics_token is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), deps.metrics_token.encode()):
                raise Unauthorized("/metrics needs 'Authorization: Bearer <metrics_token>'.", code="invalid_metrics_token")
        return web.Response(body=deps.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        if deps.draining:
            return web.json_response({"status": "draining"}, status=503)
        # The store down is no reason to take this process out of a load balancer: it serves on (balance
        # slices in hand, ledger rows held in memory), so the answer stays 200 and says so.
        if not deps.store_ok():
            return web.json_response({"status": "degraded", "store": "down"})
        return web.json_response({"status": "ok", "store": "ok"})

    async def status(request: web.Request) -> web.Response:
        return web.Response(
            body=await deps.status_body("html"), content_type="text/html", charset="utf-8",
            headers=_cache_headers(deps),
        )

    async def status_json(request: web.Request) -> web.Response:
        # public data without credentials: any web page may read it (a status widget elsewhere)
        headers = {**_cache_headers(deps), "Access-Control-Allow-Origin": "*"}
        return web.Response(body=await deps.status_body("json"), content_type="application/json", headers=headers)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/status.json", status_json)
