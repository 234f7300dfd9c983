"""Admin routes for account health: POST /admin/channels/{name}/test (probe every account of a channel now)
and GET /admin/health (every account's state, reason, last probe and streaks). Never a key: accounts are
named by their index in the channel."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .config import Config
from .errors import NotFound
from .prober import Prober
from .web_admin_guard import admin_guard

__all__ = ["add_routes"]


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def add_routes(app: web.Application, cfg: Config, prober: Prober) -> None:
    guarded = admin_guard(cfg.admin_token)

    async def test(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        results = await prober.probe_channel(name)
        if not results:
            raise NotFound(f"No channel named '{name}'.", param="name", code="channel_not_found")
        router = prober.router
        return _json({"channel": name, "accounts": [
            {"index": acc.index, "state": router.state(acc), "ok": r.ok, "status": r.status,
             "latency_ms": r.latency_ms, "error": r.error}
            for acc, r in results
        ]})

    async def health(request: web.Request) -> web.StreamResponse:
        h = prober.cfg
        return _json({
            "probes": {"enabled": h.enabled, "interval": h.interval, "probing_here": prober.probing},
            "channels": prober.view(),
        })

    app.router.add_post("/admin/channels/{name}/test", guarded(test))
    app.router.add_get("/admin/health", guarded(health), allow_head=False)
