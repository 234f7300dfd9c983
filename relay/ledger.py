"""The usage ledger: a bounded in-process buffer and the one task that flushes it to the store.

`append` is all the request path does (a deque append). The flusher wakes every `flush_interval` or as
soon as a batch is full, and writes one transaction per batch. If the store fails, rows stay in the buffer
and are retried; while the buffer is full the relay refuses new work (`full`) rather than lose records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from .config import LedgerConfig
from .metrics import Metrics
from .store_api import Storage
from .types import UsageRecord

__all__ = ["Ledger"]

log = logging.getLogger("relay.ledger")


class Ledger:
    """`holder` names this process's balance leases (the store lowers them by the costs it writes), and
    `on_written` hears which costs each written batch moved into spent (key id -> USD)."""

    def __init__(
        self, store: Storage, cfg: LedgerConfig, metrics: Metrics, holder: str | None = None,
        on_written: Callable[[Mapping[str, float]], None] | None = None,
    ) -> None:
        self._store = store
        self._holder = holder
        self._on_written = on_written
        self._cfg = cfg
        self._metrics = metrics
        self._rows: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.store_ok = True  # false from a failed write until one succeeds

    @property
    def full(self) -> bool:
        return len(self._rows) >= self._cfg.max_pending

    @property
    def pending(self) -> int:
        return len(self._rows)

    def append(self, row: UsageRecord) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._cfg.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-flusher")

    async def close(self) -> None:
        """Stop the flusher and write everything still buffered."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None
        while self._rows:
            if not await self.flush_once():
                log.error("ledger: %d usage rows could not be written at shutdown", len(self._rows))
                break

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._cfg.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            while self._rows and not self._closing:
                if not await self.flush_once():
                    break  # the store is failing: back off until the next interval
                if len(self._rows) < self._cfg.batch_size:
                    break

    async def flush_once(self) -> bool:
        """Write one batch. False if the store failed (the rows stay queued, in order)."""
        n = min(len(self._rows), self._cfg.batch_size)
        if not n:
            return True
        batch = [self._rows.popleft() for _ in range(n)]
        started = time.perf_counter()
        try:
            refused = await self._store.write_usage(batch, self._holder)
        except Exception as e:  # noqa: BLE001 - any store failure: keep the rows and retry later
            self._rows.extendleft(reversed(batch))
            self._metrics.store_error("ledger")
            if self.store_ok:  # once per outage, not once per retry
                log.error("ledger: the store failed (%s); %d usage rows wait in memory and are retried",
                          type(e).__name__, len(self._rows))
                self.store_ok = False
                self._metrics.store_up.set(0)
            self._metrics.ledger_pending.set(len(self._rows))
            return False
        if not self.store_ok:
            log.warning("ledger: the store answers again; writing the %d rows that waited", len(self._rows) + n)
            self.store_ok = True
            self._metrics.store_up.set(1)
        if self._on_written is not None:
            # A refused row's cost reached no spent, but counting it here only leaves its slice smaller.
            costs: dict[str, float] = {}
            for r in batch:
                if r.cost_usd:
                    costs[r.key_id] = costs.get(r.key_id, 0.0) + r.cost_usd
            if costs:
                self._on_written(costs)
        self._metrics.ledger_flush.observe(time.perf_counter() - started)
        self._metrics.ledger_rows.inc(n - refused)
        if refused:
            self._metrics.ledger_rejected.inc(refused)
        self._metrics.ledger_pending.set(len(self._rows))
        return True
