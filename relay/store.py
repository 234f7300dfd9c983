"""The only aiosqlite user: schema, batched ledger writes, and the reads behind /status.

One connection, one writer, WAL. Never called on the request path; the ledger's flusher and the
operations pages are its only callers.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter

import aiosqlite

from .types import UsageRecord

__all__ = ["Availability", "Store"]

log = logging.getLogger("relay.store")

_COLUMNS = [f.name for f in fields(UsageRecord)]
_ROW = attrgetter(*_COLUMNS)  # a record as a flat tuple (dataclasses.astuple deep-copies: 10x slower)
# A request id already written is skipped (a retried batch); any other constraint failure is an error.
_INSERT = (
    f"INSERT INTO usage ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (request_id) DO NOTHING"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT    NOT NULL UNIQUE,
    ts                REAL    NOT NULL,
    key_id            TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    endpoint          TEXT    NOT NULL,
    channel           TEXT,
    account           INTEGER,
    status            INTEGER NOT NULL,
    end_reason        TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    usage_source      TEXT    NOT NULL,
    latency_ms        REAL    NOT NULL,
    ttft_ms           REAL,
    stream            INTEGER NOT NULL,
    attempts          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_id, ts);
"""


@dataclass(frozen=True, slots=True)
class Availability:
    scope: str  # "model" or "channel"
    name: str
    ok: int
    failed: int

    @property
    def share(self) -> float | None:
        total = self.ok + self.failed
        return self.ok / total if total else None


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(_SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "Store.open() was not awaited"
        return self._db

    async def write_usage(self, rows: Sequence[UsageRecord]) -> int:
        """Write rows in one transaction; returns how many were refused.

        If the batch fails as a whole, each row is tried on its own so one bad row cannot drop the others.
        A failure of the database itself (locked, disk full) propagates: the caller keeps the rows.
        """
        db = self.db
        values = [_ROW(r) for r in rows]
        try:
            await db.executemany(_INSERT, values)
            await db.commit()
            return 0
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, TypeError, OverflowError):
            await db.rollback()
        refused = 0
        for v in values:
            try:
                await db.execute(_INSERT, v)
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, TypeError, OverflowError) as e:
                refused += 1
                log.error("usage row %s refused by the store: %s", v[0], type(e).__name__)
        await db.commit()
        return refused

    async def availability(self, since: float) -> list[Availability]:
        """Per model and per channel: requests served vs failed by the relay or upstream since `since`.

        Requests refused for the client's own fault (4xx) count as neither.
        """
        out: list[Availability] = []
        for scope in ("model", "channel"):
            sql = (
                f"SELECT {scope}, SUM(status < 400), SUM(status >= 500 OR end_reason = 'upstream_error') "
                f"FROM usage WHERE ts >= ? AND {scope} IS NOT NULL GROUP BY {scope} ORDER BY {scope}"
            )
            async with self.db.execute(sql, (since,)) as cur:
                async for name, ok, failed in cur:
                    out.append(Availability(scope, name, int(ok or 0), int(failed or 0)))
        return out

    async def count_usage(self) -> int:
        async with self.db.execute("SELECT COUNT(*) FROM usage") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
