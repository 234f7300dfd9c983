"""Operations endpoints: /metrics (Prometheus text), /healthz, /status (per-model availability page).

None of them needs a key and none shows a secret: /status names models, channels and account numbers only.
"""

from __future__ import annotations

import hmac
import html
import time
from collections.abc import Callable

from aiohttp import web

from .errors import Unauthorized
from .metrics import CONTENT_TYPE, Metrics
from .router import Router
from .store_api import Availability, Storage

__all__ = ["OpsDeps", "add_routes"]

_STATUS_CACHE_SECONDS = 10.0


class OpsDeps:
    def __init__(
        self, metrics: Metrics, router: Router, store: Storage, store_ok: Callable[[], bool],
        metrics_token: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.metrics_token = metrics_token
        self.store_ok = store_ok
        self.router = router
        self.store = store
        self.draining = False
        self._status: tuple[float, bytes] | None = None

    async def status_page(self) -> bytes:
        now = time.monotonic()
        if self._status is None or now - self._status[0] > _STATUS_CACHE_SECONDS:
            wall = time.time()
            hour = await self.store.availability(wall - 3600)
            day = await self.store.availability(wall - 86400)
            self._status = (now, _render_status(hour, day, self.router))
        return self._status[1]


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
        return web.Response(body=await deps.status_page(), content_type="text/html", charset="utf-8")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)


def _pct(a: Availability | None) -> str:
    if a is None or a.share is None:
        return "—"
    return f"{a.share * 100:.2f}% <small>({a.ok + a.failed})</small>"


def _render_status(hour: list[Availability], day: list[Availability], router: Router) -> bytes:
    def table(scope: str, names: list[str]) -> str:
        h = {a.name: a for a in hour if a.scope == scope}
        d = {a.name: a for a in day if a.scope == scope}
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{_pct(h.get(n))}</td><td>{_pct(d.get(n))}</td></tr>" for n in names
        )
        return (
            f"<h2>By {scope}</h2><table><tr><th>{scope}</th><th>last hour</th><th>last day</th></tr>{rows}</table>"
        )

    channels = sorted({a.channel.name for a in router.accounts})
    out = router.out_of_rotation()
    resting = "".join(
        f"<li>{html.escape(a.channel.name)} account {a.index}: {state}</li>" for a, state in out
    ) or "<li>none</li>"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>relay status</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em 1em;text-align:left}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        "<h1>Service status</h1><p>Share of requests served successfully (client errors excluded).</p>"
        f"{table('model', router.models())}{table('channel', channels)}"
        f"<h2>Accounts out of rotation</h2><ul>{resting}</ul></body></html>"
    )
    return page.encode()
