"""A key's spending over a window of time, read from the ledger: the same method for both stores.

Mixins, so store.py and store_pg.py (each at its size limit) stay as they are; they run on the store's own
connection (`db`, aiosqlite) or pool (`pool`, asyncpg) and import neither library. Both queries are one
range scan of the usage(key_id, ts) index.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["PgSpend", "SqliteSpend"]


class _HasDb(Protocol):
    @property
    def db(self) -> Any: ...


class _HasPool(Protocol):
    @property
    def pool(self) -> Any: ...


class SqliteSpend:
    async def spent_between(self: _HasDb, key_id: str, since: float, until: float) -> float:
        """USD the key spent on requests that arrived in [since, until) (unix seconds)."""
        sql = "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE key_id = ? AND ts >= ? AND ts < ?"
        rows = await self.db.execute_fetchall(sql, (key_id, since, until))
        return float(rows[0][0]) if rows else 0.0


class PgSpend:
    async def spent_between(self: _HasPool, key_id: str, since: float, until: float) -> float:
        """USD the key spent on requests that arrived in [since, until) (unix seconds)."""
        sql = "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE key_id = $1 AND ts >= $2 AND ts < $3"
        return float(await self.pool.fetchval(sql, key_id, float(since), float(until)))
