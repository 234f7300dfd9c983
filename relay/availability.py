"""Availability history: counts of ok and failed outcomes, with latency sums, per model and per channel in
time buckets, from real traffic (`observe_request`, one call per request the proxy records) and from health
probes (`observe_probe`). Counts only: no content, no key, no account index.

What counts (`traffic_outcome`):
- ok: the relay answered 2xx/3xx (a stream the client left early included);
- failed: 5xx, the relay's own refusals included (503 upstream_unavailable, balance_unavailable, 502, 504),
  a 2xx stream the upstream broke off, and a 429 because every account of the model was rate limited (by
  the upstream or by its channel's budget): for the client the model was unavailable;
- neither: the client's own errors (4xx: a bad body, an unknown model, the key's rate limits or balance),
  a request the client left before any answer (499) and one cut by the relay's own shutdown.
A probe counts by its `ok`.

The request path only adds to a dict in memory. A task flushes it to the store every few seconds, each row
an additive upsert (several processes add to the same bucket), and prunes rows past the retention.

Buckets: 5 minutes by default (`status.bucket`): an outage of a few minutes shows as its own bar, 90 bars
span 7.5 hours, and 90 days are 25,920 rows per model or channel (one row per bucket that saw an outcome).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from .store_api import BucketCount, Storage

__all__ = ["RETENTION", "AvailabilityRecorder", "ProbeOutcome", "traffic_outcome"]

log = logging.getLogger("relay.availability")

# At least 90 days are kept for the 90-day uptime; one more day so the oldest window is always whole.
RETENTION = 91 * 86400
# Distinct (scope, name, bucket) entries held in memory between flushes (or while the store is down):
# models and channels are the operator's, so this is never reached unless the store is down for long.
_MAX_PENDING = 50_000
_PRUNE_EVERY = 3600.0  # seconds between two prunes (a DELETE by an indexed time range)


class ProbeOutcome(Protocol):
    """What a health probe reports (relay.prober's ProbeResult has these fields, and more)."""

    @property
    def channel(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def ok(self) -> bool: ...

    @property
    def latency_ms(self) -> float: ...

    @property
    def at(self) -> float: ...


def traffic_outcome(status: int, end_reason: str, upstream_wide: bool = False) -> bool | None:
    """A recorded request -> True (ok), False (failed) or None (not counted); see the module's docstring."""
    if end_reason == "shutdown":
        return None
    if status < 400:
        return end_reason != "upstream_error"
    if status >= 500:
        return False
    if status == 429 and upstream_wide:
        return False
    return None


class AvailabilityRecorder:
    """Counts outcomes in memory and flushes them to the store (`start` / `close`).

    `clock` gives wall-clock unix seconds (buckets are aligned to it, so every process agrees on them).
    """

    def __init__(
        self, store: Storage, bucket: int = 300, clock: Callable[[], float] = time.time,
        flush_interval: float | None = None,
    ) -> None:
        self._store = store
        self.bucket = bucket
        self._clock = clock
        # every few seconds; at most half a bucket so short buckets show up while they are current
        self.flush_interval = flush_interval if flush_interval is not None else min(5.0, bucket / 2)
        self._pending: dict[tuple[str, str, int], list[float]] = {}
        self.dropped = 0  # outcomes not kept because too many entries waited for the store
        self.store_ok = True
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._pruned_at = float("-inf")

    # -- counting (the request path) -------------------------------------------------------------------

    def observe_request(
        self, model: str, channel: str | None, status: int, end_reason: str, latency_ms: float,
        upstream_wide: bool = False,
    ) -> None:
        ok = traffic_outcome(status, end_reason, upstream_wide)
        if ok is not None:
            self.observe(model, channel, ok, latency_ms)

    def observe_probe(self, result: ProbeOutcome) -> None:
        self.observe(result.model, result.channel, result.ok, result.latency_ms, result.at)

    def observe(
        self, model: str, channel: str | None, ok: bool, latency_ms: float | None = None, at: float | None = None,
    ) -> None:
        t = int(self._clock() if at is None else at)
        start = t - t % self.bucket
        if model:
            self._add(("model", model, start), ok, latency_ms)
        if channel:
            self._add(("channel", channel, start), ok, latency_ms)

    def _add(self, key: tuple[str, str, int], ok: bool, latency_ms: float | None) -> None:
        c = self._pending.get(key)
        if c is None:
            if len(self._pending) >= _MAX_PENDING:
                self.dropped += 1
                return
            c = self._pending[key] = [0, 0, 0.0, 0]
        if ok:
            c[0] += 1
            if latency_ms is not None:
                c[2] += latency_ms
                c[3] += 1
        else:
            c[1] += 1

    def pending(self) -> list[BucketCount]:
        """What waits to be written, in key order."""
        return [
            BucketCount(scope, name, start, int(c[0]), int(c[1]), round(c[2], 3), int(c[3]))
            for (scope, name, start), c in sorted(self._pending.items())
        ]

    # -- writing --------------------------------------------------------------------------------------

    async def flush_once(self) -> bool:
        """Write what is pending as one batch; False if the store failed (the counts are kept and merged
        with what comes next)."""
        if not self._pending:
            return True
        rows = self.pending()
        self._pending = {}
        try:
            await self._store.add_buckets(rows)
        except Exception as e:  # noqa: BLE001 - any store failure: keep the counts for the next flush
            for r in rows:
                c = self._pending.setdefault((r.scope, r.name, r.start), [0, 0, 0.0, 0])
                c[0] += r.ok
                c[1] += r.failed
                c[2] += r.latency_ms_sum
                c[3] += r.latency_n
            if self.store_ok:
                log.error("availability: the store failed (%s); counts wait in memory", type(e).__name__)
                self.store_ok = False
            return False
        if not self.store_ok:
            log.warning("availability: the store answers again")
            self.store_ok = True
        return True

    async def prune(self) -> int:
        """Delete the rows past the retention (90 days and a day)."""
        return await self._store.prune_buckets(int(self._clock()) - RETENTION)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="availability-flusher")

    async def close(self) -> None:
        """Stop the flusher and write what is still pending."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush_once()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if now - self._pruned_at >= _PRUNE_EVERY:  # at start, then hourly
                self._pruned_at = now
                try:
                    removed = await self.prune()
                except Exception as e:  # noqa: BLE001 - tried again at the next hour
                    log.warning("availability: pruning failed (%s)", type(e).__name__)
                else:
                    if removed:
                        log.info("availability: %d buckets older than %d days removed", removed, RETENTION // 86400)
            if self._stop.is_set():
                return
            try:
                await asyncio.wait_for(self._stop.wait(), self.flush_interval)
            except TimeoutError:
                pass
            await self.flush_once()
