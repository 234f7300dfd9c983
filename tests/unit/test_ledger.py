"""The ledger on a real SQLite file: batches, a bad row, a failing store, the final flush."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from relay.config import LedgerConfig
from relay.ledger import Ledger
from relay.metrics import Metrics
from relay.store import Store
from relay.types import UsageRecord


def row(i: int, **kw: object) -> UsageRecord:
    base = UsageRecord(
        request_id=f"req_{i}", ts=1_700_000_000.0 + i, key_id="k", model="demo", endpoint="chat/completions",
        channel="fake", account=i % 3, status=200, end_reason="ok", prompt_tokens=5, completion_tokens=7,
        usage_source="upstream", latency_ms=1.0, ttft_ms=None, stream=False, attempts=1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def rows_in(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT request_id, prompt_tokens FROM usage ORDER BY id").fetchall()


def metrics() -> Metrics:
    return Metrics([], list)


@pytest.fixture
async def stores() -> AsyncIterator[list[Store]]:
    """Stores a test opens; closed even when the test fails (an open aiosqlite thread blocks exit)."""
    opened: list[Store] = []
    yield opened
    for s in opened:
        await s.close()


async def test_rows_are_written_in_batches_and_flushed_on_close(tmp_path: Path, stores: list[Store]) -> None:
    store = Store(str(tmp_path / "l.db"))
    stores.append(store)
    await store.open()
    ledger = Ledger(store, LedgerConfig(flush_interval=60, batch_size=10), metrics())
    ledger.start()
    for i in range(25):
        ledger.append(row(i))
    await ledger.close()
    await store.close()
    assert [r[0] for r in rows_in(tmp_path / "l.db")] == [f"req_{i}" for i in range(25)]


async def test_a_bad_row_does_not_drop_its_batch(tmp_path: Path, stores: list[Store]) -> None:
    store = Store(str(tmp_path / "l.db"))
    stores.append(store)
    await store.open()
    m = metrics()
    ledger = Ledger(store, LedgerConfig(batch_size=100), m)
    ledger.append(row(1))
    ledger.append(row(2, prompt_tokens=-1))  # violates the CHECK constraint
    ledger.append(row(3))
    assert await ledger.flush_once()
    await store.close()
    assert rows_in(tmp_path / "l.db") == [("req_1", 5), ("req_3", 5)]
    assert m.registry.get_sample_value("relay_ledger_rows_rejected_total") == 1


class FailingStore(Store):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.fail = True

    async def write_usage(self, rows, holder=None):  # type: ignore[no-untyped-def]
        if self.fail:
            raise OSError("disk full")
        return await super().write_usage(rows, holder)


async def test_a_failing_store_keeps_rows_in_order_until_it_recovers(tmp_path: Path, stores: list[Store]) -> None:
    store = FailingStore(str(tmp_path / "l.db"))
    stores.append(store)
    await store.open()
    ledger = Ledger(store, LedgerConfig(batch_size=2, max_pending=3), metrics())
    for i in range(3):
        ledger.append(row(i))
    assert not await ledger.flush_once()
    assert ledger.pending == 3 and ledger.full
    store.fail = False
    await ledger.close()
    await store.close()
    assert [r[0] for r in rows_in(tmp_path / "l.db")] == ["req_0", "req_1", "req_2"]


async def test_the_same_request_is_never_written_twice(tmp_path: Path, stores: list[Store]) -> None:
    store = Store(str(tmp_path / "l.db"))
    stores.append(store)
    await store.open()
    assert await store.write_usage([row(1), row(2)]) == 0
    await store.write_usage([row(1)])
    assert await store.count_usage() == 2
    await store.close()
