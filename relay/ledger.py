"""The usage ledger: a bounded in-process buffer and the one task that flushes it to the store.

`append` is all the request path does (a deque append, and one write to the journal). The flusher wakes
every `flush_interval` or as soon as a batch is full, and writes one transaction per batch. If the store
fails, rows stay in the buffer and are retried; while the buffer is full the relay refuses new work (`full`)
rather than lose records.

With a journal (relay/journal.py) a row is also in the kernel before its answer ends, so a process killed
before its flush loses none: `recover` writes what such processes left (this one's previous run, other
worker slots that are gone) before serving, and the flusher looks for more once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from .config import ConfigError, LedgerConfig
from .journal import Journal
from .metrics import Metrics
from .store_api import Storage
from .types import UsageRecord

__all__ = ["Ledger"]

log = logging.getLogger("relay.ledger")

# Seconds between looks for journals of processes that died while this one serves (a restarted process
# replays its own at start): well within a balance lease's 60 s, so a dead process's lease pays for them.
_SCAN_INTERVAL = 1.0
# Seconds a starting process waits for another one that is replaying this process's previous journal.
_OWN_WAIT = 10.0


class Ledger:
    """`holder` names this process's balance leases (the store lowers them by the costs it writes), and
    `on_written` hears which costs each written batch moved into spent (key id -> USD)."""

    def __init__(
        self, store: Storage, cfg: LedgerConfig, metrics: Metrics, holder: str | None = None,
        on_written: Callable[[Mapping[str, float]], None] | None = None, journal: Journal | None = None,
    ) -> None:
        self._store = store
        self._journal = journal
        self._next_scan = 0.0
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
        if self._journal is not None:
            self._journal.append(row)
        self._rows.append(row)
        if len(self._rows) >= self._cfg.batch_size:
            self._wake.set()

    async def recover(self) -> None:
        """Before serving: write the rows that processes killed before their flush left in their journals,
        then open this process's own journal (ConfigError naming ledger.journal_dir if it cannot)."""
        j = self._journal
        if j is None:
            return
        try:
            await self._replay(wait_own=_OWN_WAIT)
            j.open()
            if strays := j.strays():
                log.warning("ledger journal: %d journals in %s are of another database: not written to this one",
                            strays, j.directory)
        except OSError as e:
            raise ConfigError(f"ledger.journal_dir: cannot keep the journal in {j.directory} ({e.strerror})") from None
        self._next_scan = time.monotonic() + _SCAN_INTERVAL

    async def _replay(self, wait_own: float = 0.0) -> None:
        j = self._journal
        assert j is not None
        async for orphan in j.orphans(wait_own):
            # A previous run's lease is charged only before this process takes it back (at start); after
            # that its slice in memory would not know, so the rows then go to spent without a lease.
            holder = orphan.holder if (wait_own or orphan.holder != self._holder) else None
            rows = orphan.rows
            try:
                for i in range(0, len(rows), self._cfg.batch_size):
                    await self._store.write_usage(rows[i : i + self._cfg.batch_size], holder)
            except Exception as e:  # noqa: BLE001 - the file stays and is tried again
                self._metrics.store_error("ledger")
                log.error("ledger: the store failed (%s) writing the journal %s; it is tried again",
                          type(e).__name__, orphan.path)
                continue
            orphan.done()
            log.warning(
                "ledger: wrote the %d usage rows of the journal %s (a process stopped before its flush)%s",
                len(rows), orphan.path, f"; {orphan.unreadable} torn lines ignored" if orphan.unreadable else "",
            )

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
                log.error("ledger: %d usage rows could not be written at shutdown%s", len(self._rows),
                          "; the journal keeps them for the next start" if self._journal is not None else "")
                break
        if self._journal is not None:
            self._journal.close(all_written=not self._rows)

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._cfg.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            while self._rows and not self._closing:
                if not await self.flush_once():
                    break  # the store is failing: back off until the next interval
                if len(self._rows) < self._cfg.batch_size:
                    break
            if self._journal is not None:
                await self._journal.sync()
                if self.store_ok and time.monotonic() >= self._next_scan:
                    self._next_scan = time.monotonic() + _SCAN_INTERVAL
                    try:
                        await self._replay()
                    except OSError as e:  # the directory went away or cannot be read: the flusher goes on
                        log.error("ledger journal: cannot look for journals to write (%s)", e.strerror)

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
        if self._journal is not None:
            self._journal.written(n)
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
