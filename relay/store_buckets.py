"""The SQLite store's availability history: one row per (scope, name, bucket start), added to, never replaced.

Mixed into relay.store.Store, which provides the connection (`db`) and its transaction lock (`_tx`). Several
processes sharing the file add to the same rows: each write is an upsert that adds its counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .store_api import BucketCount

__all__ = ["BucketsSql"]

_UPSERT = (
    "INSERT INTO availability_buckets (scope, name, start, ok, failed, latency_ms_sum, latency_n) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, name, start) DO UPDATE SET "
    "ok = ok + excluded.ok, failed = failed + excluded.failed, "
    "latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum, latency_n = latency_n + excluded.latency_n"
)


class BucketsSql:
    _tx: asyncio.Lock

    @property
    def db(self) -> Any:  # the Store's connection
        raise NotImplementedError

    async def add_buckets(self, rows: Sequence[BucketCount]) -> None:
        """Add the counts to the stored buckets, in one transaction."""
        if not rows:
            return
        values = [(r.scope, r.name, r.start, r.ok, r.failed, r.latency_ms_sum, r.latency_n) for r in rows]
        async with self._tx:
            try:
                await self.db.executemany(_UPSERT, values)
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise

    async def buckets_since(self, since: int, width: int) -> list[BucketCount]:
        """Buckets from `since` on, regrouped into buckets of `width` seconds (rows of a former, smaller
        width fold into the present one), ordered by scope, name, start."""
        sql = (
            "SELECT scope, name, (start / ?) * ? AS b, SUM(ok), SUM(failed), SUM(latency_ms_sum), SUM(latency_n) "
            "FROM availability_buckets WHERE start >= ? GROUP BY scope, name, b ORDER BY scope, name, b"
        )
        return [
            BucketCount(scope, name, int(b), int(ok), int(failed), float(lat), int(n))
            for scope, name, b, ok, failed, lat, n in await self.db.execute_fetchall(sql, (width, width, since))
        ]

    async def bucket_totals(self, since: Sequence[int]) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """(ok, failed) of each scope and name since each of `since`, in one scan."""
        if not since:
            return {}
        sums = ", ".join(
            "SUM(CASE WHEN start >= ? THEN ok ELSE 0 END), SUM(CASE WHEN start >= ? THEN failed ELSE 0 END)"
            for _ in since
        )
        args = [t for t in since for _ in (0, 1)]
        sql = f"SELECT scope, name, {sums} FROM availability_buckets WHERE start >= ? GROUP BY scope, name"
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for row in await self.db.execute_fetchall(sql, (*args, min(since))):
            v = [int(x or 0) for x in row[2:]]
            out[(row[0], row[1])] = [(v[i], v[i + 1]) for i in range(0, len(v), 2)]
        return out

    async def prune_buckets(self, before: int) -> int:
        """Delete buckets that start before `before`; returns how many."""
        async with self._tx:
            try:
                cur = await self.db.execute("DELETE FROM availability_buckets WHERE start < ?", (before,))
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise
            return int(cur.rowcount)
