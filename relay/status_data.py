"""What the public status page shows, as one JSON-ready dict (the body of /status.json), cached.

From the availability history (relay.availability, in the store) and the router's present account states:
per public model the last 90 buckets, uptime over 24 h / 7 d / 30 d / 90 d, the mean latency of the last two
buckets, and a state; an overall state from the models'. Channels (and which accounts are out of rotation)
only with `status.show_channels`: their names are the operator's business.

States, from the last two buckets (the current one and the one before) and the rotation:
- outage: no account of the model is in rotation, under 50 % of recent outcomes were ok, or the relay is
  refusing all work (503 relay_overloaded: its ledger is full);
- degraded: under 99 % ok;
- operational: otherwise (no recent outcome at all, with an account in rotation, included).
Overall: "Major outage" when more than half the models (or the only one) are in outage, "Degraded
performance" when any model is not operational, else "All systems operational".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .config import StatusConfig
from .router import Router
from .store_api import BucketCount, Storage

__all__ = ["BANNERS", "BARS", "DEGRADED_BELOW", "OUTAGE_BELOW", "WINDOWS", "StatusBoard", "build_status", "state_of"]

log = logging.getLogger("relay.status")

BARS = 90
RECENT = 2  # buckets that make a model's present state and latency: the current one is still filling
OPERATIONAL_FROM = DEGRADED_BELOW = 0.99  # green bar / operational from 99 % ok
OUTAGE_BELOW = 0.5  # red bar / outage under 50 % ok; amber between
WINDOWS = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}
BANNERS = {
    "operational": "All systems operational",
    "degraded": "Degraded performance",
    "outage": "Major outage",
}
_CACHE_MAX = 10.0  # seconds a computed page is served (a flood of /status costs the store nothing more)
# The uptime windows scan up to 90 days of rows (26,000 per model at 5-minute buckets): read once a minute.
_TOTALS_MAX = 60.0


def _share(ok: int, failed: int) -> float | None:
    total = ok + failed
    return ok / total if total else None


def state_of(availability: float | None, in_rotation: bool) -> str:
    if not in_rotation or (availability is not None and availability < OUTAGE_BELOW):
        return "outage"
    if availability is not None and availability < DEGRADED_BELOW:
        return "degraded"
    return "operational"


def overall_state(states: list[str]) -> str:
    down = states.count("outage")
    if states and down * 2 > len(states):
        return "outage"
    if any(s != "operational" for s in states):
        return "degraded"
    return "operational"


def _series(
    rows: list[BucketCount], first: int, width: int, totals: list[tuple[int, int]] | None, in_rotation: bool,
) -> dict[str, Any]:
    by_start = {r.start: r for r in rows}
    bars = []
    for i in range(BARS):
        start = first + i * width
        r = by_start.get(start)
        ok, failed = (r.ok, r.failed) if r is not None else (0, 0)
        bars.append({"start": start, "end": start + width, "ok": ok, "failed": failed,
                     "availability": _share(ok, failed)})
    recent = [by_start[s] for s in (first + (BARS - k) * width for k in range(1, RECENT + 1)) if s in by_start]
    ok = sum(r.ok for r in recent)
    failed = sum(r.failed for r in recent)
    lat_n = sum(r.latency_n for r in recent)
    latency = round(sum(r.latency_ms_sum for r in recent) / lat_n, 1) if lat_n else None
    uptime = {w: (_share(*totals[i]) if totals else None) for i, w in enumerate(WINDOWS)}
    return {
        "state": state_of(_share(ok, failed), in_rotation), "in_rotation": in_rotation, "bars": bars,
        "uptime": uptime, "latency_ms": latency,
    }


def build_status(
    cfg: StatusConfig, router: Router, rows: list[BucketCount], totals: dict[tuple[str, str], list[tuple[int, int]]],
    now: float, overloaded: bool = False,
) -> dict[str, Any]:
    """The /status.json document from the stored buckets (`rows` since the first bar) and the router."""
    width = cfg.bucket
    t = int(now)
    first = t - t % width - (BARS - 1) * width
    grouped: dict[tuple[str, str], list[BucketCount]] = {}
    for r in rows:
        grouped.setdefault((r.scope, r.name), []).append(r)
    out_accounts = router.out_of_rotation()
    out_ids = {id(a) for a, _ in out_accounts}
    live_channels = {a.channel.name for a in router.accounts if id(a) not in out_ids}
    models = []
    for name in router.models():
        in_rotation = any(ch.name in live_channels for ch in router.channels_of(name))
        row = {"name": name, **_series(grouped.get(("model", name), []), first, width,
                                       totals.get(("model", name)), in_rotation)}
        if overloaded:  # refused before the model is read, so in no model's counts: shown here instead
            row["state"] = "outage"
        if cfg.show_channels:
            row["channels"] = sorted(ch.name for ch in router.channels_of(name))
        models.append(row)
    state = overall_state([m["state"] for m in models])
    doc: dict[str, Any] = {
        "title": cfg.title, "note": cfg.note, "state": state, "banner": BANNERS[state], "updated_at": round(now, 3),
        "bucket_seconds": width, "models": models,
    }
    if cfg.show_channels:
        channels = []
        for name in sorted({a.channel.name for a in router.accounts}):
            row = {"name": name, **_series(grouped.get(("channel", name), []), first, width,
                                           totals.get(("channel", name)), name in live_channels)}
            row["accounts_out"] = [
                {"index": a.index, "state": why} for a, why in out_accounts if a.channel.name == name
            ]
            channels.append(row)
        doc["channels"] = channels
    return doc


class StatusBoard:
    """The status document, computed at most once per `ttl` seconds (10, or the bucket if shorter) by one
    caller at a time: concurrent requests wait for that one and share its answer."""

    def __init__(
        self, store: Storage, router: Router, cfg: StatusConfig, clock: Callable[[], float] = time.time,
        overloaded: Callable[[], bool] = lambda: False,
    ) -> None:
        self._overloaded = overloaded
        self._store = store
        self._router = router
        self.cfg = cfg
        self._clock = clock
        self.ttl = min(_CACHE_MAX, float(cfg.bucket))
        self._totals_ttl = min(_TOTALS_MAX, float(cfg.bucket))
        self._totals_at = float("-inf")
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._rows: list[BucketCount] = []
        self._totals: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self.renders: dict[str, bytes] = {}  # derived bodies (json, html) of the cached document

    async def document(self) -> dict[str, Any]:
        c = self._cached
        if c is not None and time.monotonic() - c[0] < self.ttl:
            return c[1]
        async with self._lock:
            c = self._cached
            if c is not None and time.monotonic() - c[0] < self.ttl:
                return c[1]
            doc = await self._compute()
            self._cached = (time.monotonic(), doc)
            self.renders = {}
            return doc

    async def _compute(self) -> dict[str, Any]:
        now = self._clock()
        width = self.cfg.bucket
        t = int(now)
        first = t - t % width - (BARS - 1) * width
        try:
            self._rows = await self._store.buckets_since(first, width)
            if time.monotonic() - self._totals_at >= self._totals_ttl:
                self._totals = await self._store.bucket_totals([t - s for s in WINDOWS.values()])
                self._totals_at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - the page still shows the rotation and the last history read
            log.warning("status: the store failed (%s); showing the last history read", type(e).__name__)
        return build_status(self.cfg, self._router, self._rows, self._totals, now, self._overloaded())
