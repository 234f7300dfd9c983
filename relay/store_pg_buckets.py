"""The PostgreSQL store's availability history: one row per (scope, name, bucket start), added to, never
replaced. Mixed into relay.store_pg.PgStore, which provides the pool (`pool`). Every process adds to the
same rows: a batch is one upsert that adds its counts (ordered by key, so two batches never deadlock).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .store_api import BucketCount

__all__ = ["PgBucketsSql"]

_UPSERT = (
    "INSERT INTO availability_buckets AS b (scope, name, start, ok, failed, latency_ms_sum, latency_n) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::float8[], $7::int8[]) "
    "ON CONFLICT (scope, name, start) DO UPDATE SET "
    "ok = b.ok + excluded.ok, failed = b.failed + excluded.failed, "
    "latency_ms_sum = b.latency_ms_sum + excluded.latency_ms_sum, latency_n = b.latency_n + excluded.latency_n"
)


class PgBucketsSql:
    @property
    def pool(self) -> Any:  # the PgStore's pool
        raise NotImplementedError

    async def add_buckets(self, rows: Sequence[BucketCount]) -> None:
        """Add the counts to the stored buckets, in one statement."""
        if not rows:
            return
        merged: dict[tuple[str, str, int], list[float]] = {}  # one row per key: an upsert may touch a row once
        for r in rows:
            m = merged.setdefault((r.scope, r.name, r.start), [0, 0, 0.0, 0])
            m[0] += r.ok
            m[1] += r.failed
            m[2] += r.latency_ms_sum
            m[3] += r.latency_n
        keys = sorted(merged)
        vals = [merged[k] for k in keys]
        await self.pool.execute(
            _UPSERT, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            [int(v[0]) for v in vals], [int(v[1]) for v in vals], [float(v[2]) for v in vals],
            [int(v[3]) for v in vals],
        )

    async def buckets_since(self, since: int, width: int) -> list[BucketCount]:
        """Buckets from `since` on, regrouped into buckets of `width` seconds, ordered by scope, name, start."""
        sql = (
            "SELECT scope, name, (start / $1) * $1 AS b, SUM(ok), SUM(failed), SUM(latency_ms_sum), SUM(latency_n) "
            "FROM availability_buckets WHERE start >= $2 GROUP BY scope, name, b ORDER BY scope, name, b"
        )
        return [
            BucketCount(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), float(r[5]), int(r[6]))
            for r in await self.pool.fetch(sql, int(width), int(since))
        ]

    async def bucket_totals(self, since: Sequence[int]) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """(ok, failed) of each scope and name since each of `since`, in one scan."""
        if not since:
            return {}
        sums = ", ".join(
            f"COALESCE(SUM(ok) FILTER (WHERE start >= ${i}), 0), COALESCE(SUM(failed) FILTER (WHERE start >= ${i}), 0)"
            for i in range(2, len(since) + 2)
        )
        sql = f"SELECT scope, name, {sums} FROM availability_buckets WHERE start >= $1 GROUP BY scope, name"
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for row in await self.pool.fetch(sql, int(min(since)), *(int(t) for t in since)):
            v = [int(x) for x in tuple(row)[2:]]
            out[(row[0], row[1])] = [(v[i], v[i + 1]) for i in range(0, len(v), 2)]
        return out

    async def prune_buckets(self, before: int) -> int:
        """Delete buckets that start before `before`; returns how many."""
        status = await self.pool.execute("DELETE FROM availability_buckets WHERE start < $1", int(before))
        return int(status.rsplit(" ", 1)[-1])
