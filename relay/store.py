"""The only aiosqlite user: schema, batched ledger writes, balance leases, and the reads behind /status.

One connection per process, WAL. Never called on the request path: the ledger's flusher, the key cache's
poller, the admin API, the CLI and the operations pages are its callers.

Two writers share the key table without racing: the operator (CLI, admin API) writes only the admin
columns and bumps `rev`; the relay writes only `spent_usd`, in the same transaction as the ledger rows
that account for it, so after any restart each key's spent equals the sum of its ledger rows.
The key table's SQL is in relay/store_keys.py, the channels' in store_channels.py (mixins on this connection).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from .store_api import (
    ADMIN_KEY_FIELDS,
    USAGE_COLUMNS,
    Availability,
    SchemaError,
    usage_row,
)
from .store_buckets import BucketsSql
from .store_channels import SqliteChannels
from .store_keys import SqliteKeys
from .store_schema import MIGRATIONS
from .store_spend import SqliteSpend
from .types import UsageRecord

__all__ = ["ADMIN_KEY_FIELDS", "MIGRATIONS", "Availability", "Store"]

log = logging.getLogger("relay.store")

_ROW = usage_row
# A request id already written is skipped (a retried batch); any other constraint failure is an error.
_INSERT = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' for _ in USAGE_COLUMNS)}) "
    "ON CONFLICT (request_id) DO NOTHING"
)


async def _apply(db: aiosqlite.Connection, version: int) -> None:
    for statement in MIGRATIONS[version - 1]:
        if statement.startswith(_ADD_USAGE_COLUMN):
            async with db.execute("PRAGMA table_info(usage)") as cur:
                if statement.split()[5] in {row[1] async for row in cur}:
                    continue  # a file that already has it (cost_usd: a ledger from after billing)
        await db.execute(statement)


_ADD_USAGE_COLUMN = "ALTER TABLE usage ADD COLUMN "
# A lease is granted when the free balance covers what is needed within this much (float sums of prices).
_LEASE_EPSILON = 1e-9


class Store(SqliteSpend, BucketsSql, SqliteChannels, SqliteKeys):
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # One connection serves the ledger flusher and the lease keeper: their transactions must not interleave.
        self._tx = asyncio.Lock()
        self.schema_version = 0
        self.applied: tuple[int, ...] = ()

    async def open(self) -> None:
        # Every implicit transaction takes the write lock when it begins (BEGIN IMMEDIATE): a write that
        # reads first (the next rev) and finds another process's commit since its snapshot would otherwise
        # fail at once ("database is locked") instead of waiting its turn. Reads outside a transaction are
        # read whole in one call (execute_fetchall): a cursor left open across awaits would hold an old
        # snapshot that a write of another task on this connection then cannot upgrade (SQLITE_BUSY_SNAPSHOT).
        self._db = await aiosqlite.connect(self.path, isolation_level="IMMEDIATE")
        # the busy timeout first: switching a new file to WAL takes a lock that other processes opening
        # it at the same moment must wait for, not fail on
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._wal()
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._migrate()

    async def _wal(self) -> None:
        """Switch to WAL. SQLite may refuse at once, without waiting (busy_timeout), while another process
        opening the file at the same moment holds the lock it needs: then try again, for up to 5 seconds."""
        for attempt in range(50):
            try:
                await self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 49:
                    raise
                await asyncio.sleep(0.1)

    async def _migrate(self) -> None:
        """Apply the migrations the file lacks, each recorded in PRAGMA user_version.

        BEGIN IMMEDIATE takes the write lock before the version is read, so a second process opening the
        file at the same moment waits (busy_timeout) and then finds the migrations applied.
        """
        db = self.db
        version = await self._user_version()
        if version < len(MIGRATIONS):
            await db.execute("BEGIN IMMEDIATE")
            try:
                version = await self._user_version()
                applied = []
                for number in range(version + 1, len(MIGRATIONS) + 1):
                    await _apply(db, number)
                    applied.append(number)
                await db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
            self.applied = tuple(applied)
            version = len(MIGRATIONS)
        if version > len(MIGRATIONS):
            raise SchemaError(
                f"schema version {version} is newer than this relay knows ({len(MIGRATIONS)}): upgrade the relay"
            )
        self.schema_version = version

    async def _user_version(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "Store.open() was not awaited"
        return self._db

    async def write_usage(self, rows: Sequence[UsageRecord], holder: str | None = None) -> int:
        """Write rows, and add their cost to each key's spent, in one transaction; returns rows refused.

        With a `holder`, the same transaction lowers that holder's balance lease of each key by the cost
        added to its spent (the lease paid for it). If the batch fails as a whole (or holds a request id
        already written), each row is tried on its own so one bad row cannot drop the others and no cost is
        counted twice. A failure of the database itself (locked, disk full) propagates: the caller keeps
        the rows.
        """
        async with self._tx:
            return await self._write_usage(rows, holder)

    async def _write_usage(self, rows: Sequence[UsageRecord], holder: str | None) -> int:
        db = self.db
        values = [_ROW(r) for r in rows]
        try:
            cur = await db.executemany(_INSERT, values)
            if cur.rowcount == len(values):
                await self._add_spent(rows, holder)
                await db.commit()
                return 0
            await db.rollback()
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, TypeError, OverflowError):
            await db.rollback()
        refused = 0
        written: list[UsageRecord] = []
        for row, v in zip(rows, values):
            try:
                cur = await db.execute(_INSERT, v)
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, TypeError, OverflowError) as e:
                refused += 1
                log.error("usage row %s refused by the store: %s", v[0], type(e).__name__)
                continue
            if cur.rowcount:
                written.append(row)
        await self._add_spent(written, holder)
        await db.commit()
        return refused

    async def _add_spent(self, rows: Iterable[UsageRecord], holder: str | None) -> None:
        spent: dict[str, float] = {}
        for r in rows:
            if r.cost_usd:
                spent[r.key_id] = spent.get(r.key_id, 0.0) + r.cost_usd
        if spent:
            await self.db.executemany(
                "UPDATE keys SET spent_usd = spent_usd + ? WHERE id = ?", [(v, k) for k, v in spent.items()]
            )
            if holder is not None:
                await self.db.executemany(
                    "UPDATE leases SET amount_usd = MAX(amount_usd - ?, 0) WHERE key_id = ? AND holder = ?",
                    [(v, k, holder) for k, v in spent.items()],
                )

    # -- balance leases -----------------------------------------------------------------------------------

    async def lease(
        self, key_id: str, holder: str, need: float, fraction: float, ttl: float, at_least: float | None = None,
    ) -> tuple[float, float] | None:
        """Grow `holder`'s lease of the key's balance and extend it `ttl` seconds.

        Returns (the lease's amount now, what is still free after it), or None: the key has no balance
        limit (or is gone).

        A lease is money set aside for one process and not yet in spent: the process reserves and settles
        from it without asking the store, and its ledger writes lower it (write_usage). What is free is
        granted - spent - every live lease; the grant is `fraction` of that but at least `need`, at most all
        of it, and nothing at all when less than `at_least` (default: `need`) is free. A lease whose expiry
        passed (its process died or lost the store) counts as nothing and is reclaimed. The write lock is
        taken first, so callers in any process go one at a time.
        """
        least = need if at_least is None else at_least
        async with self._tx:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                async with db.execute("SELECT granted_usd, spent_usd FROM keys WHERE id = ?", (key_id,)) as cur:
                    row = await cur.fetchone()
                if row is None or row[0] is None:
                    await db.commit()
                    return None
                now = time.time()
                mine = others = 0.0
                async with db.execute(
                    "SELECT holder, amount_usd FROM leases WHERE key_id = ? AND expires_at > ?", (key_id, now)
                ) as cur:
                    async for h, amount in cur:
                        if h == holder:
                            mine = amount
                        else:
                            others += amount
                free = row[0] - row[1] - others - mine
                grant = 0.0
                if free > 0 and free + _LEASE_EPSILON >= least:
                    grant = min(free, max(need, free * fraction))
                await db.execute("DELETE FROM leases WHERE key_id = ? AND expires_at <= ?", (key_id, now))
                await db.execute(
                    "INSERT INTO leases (key_id, holder, amount_usd, expires_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key_id, holder) DO UPDATE SET amount_usd = excluded.amount_usd, "
                    "expires_at = excluded.expires_at",
                    (key_id, holder, mine + grant, now + ttl),
                )
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
            return mine + grant, max(free - grant, 0.0)

    async def renew_leases(self, holder: str, ttl: float) -> dict[str, float]:
        """Extend every live lease of `holder` by `ttl` seconds; returns key id -> amount of those still live.

        A lease missing from the answer has expired: its money may already be leased to another process.
        """
        async with self._tx:
            now = time.time()
            db = self.db
            await db.execute(
                "UPDATE leases SET expires_at = ? WHERE holder = ? AND expires_at > ?", (now + ttl, holder, now)
            )
            async with db.execute(
                "SELECT key_id, amount_usd FROM leases WHERE holder = ? AND expires_at > ?", (holder, now)
            ) as cur:
                live = {k: float(a) async for k, a in cur}
            await db.commit()
            return live

    async def release_leases(self, holder: str, key_ids: Iterable[str] | None = None) -> None:
        """Give back what `holder` leased (of these keys, or all): call only after its charges are written."""
        async with self._tx:
            if key_ids is None:
                await self.db.execute("DELETE FROM leases WHERE holder = ?", (holder,))
            else:
                await self.db.executemany(
                    "DELETE FROM leases WHERE holder = ? AND key_id = ?", [(holder, k) for k in key_ids]
                )
            await self.db.commit()

    async def leased(self, key_id: str) -> float:
        """Money of the key held by live leases (granted - spent - this is what no process holds)."""
        rows = list(await self.db.execute_fetchall(
            "SELECT COALESCE(SUM(amount_usd), 0) FROM leases WHERE key_id = ? AND expires_at > ?", (key_id, time.time())
        ))
        return float(rows[0][0]) if rows else 0.0

    # -- response bindings (see relay.bindings) --------------------------------------------------------

    async def bind_response(self, response_id: str, account: str, key_id: str, ttl: float) -> None:
        now = time.time()
        async with self._tx:
            await self.db.execute(
                "INSERT INTO response_bindings VALUES (?, ?, ?, ?) ON CONFLICT (response_id) DO UPDATE SET "
                "account = excluded.account, key_id = excluded.key_id, expires_at = excluded.expires_at",
                (response_id, account, key_id, now + ttl),
            )
            await self.db.execute("DELETE FROM response_bindings WHERE expires_at <= ?", (now,))
            await self.db.commit()

    async def response_binding(self, response_id: str) -> tuple[str, str] | None:
        """(account, key id) of a live binding, or None."""
        rows = list(await self.db.execute_fetchall(
            "SELECT account, key_id FROM response_bindings WHERE response_id = ? AND expires_at > ?",
            (response_id, time.time()),
        ))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    async def unbind_response(self, response_id: str) -> None:
        async with self._tx:
            await self.db.execute("DELETE FROM response_bindings WHERE response_id = ?", (response_id,))
            await self.db.commit()

    async def spent_by_ledger(self) -> dict[str, float]:
        rows = await self.db.execute_fetchall("SELECT key_id, SUM(cost_usd) FROM usage GROUP BY key_id")
        return {k: float(v or 0) for k, v in rows}

    async def usage_summary(
        self, key_id: str | None = None, since: float | None = None, by: Sequence[str] = ("key", "model", "day")
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost grouped by any of key, model, day (UTC)."""
        columns = {"key": "key_id", "model": "model", "day": "date(ts, 'unixepoch')"}
        group = [columns[b] for b in by]
        where: list[str] = []
        args: list[str | float] = []
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        select = [*group, "COUNT(*)", "SUM(prompt_tokens)", "SUM(completion_tokens)", "SUM(cost_usd)", "SUM(status < 400)"]
        sql = f"SELECT {', '.join(select)} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if group:
            sql += f" GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}"
        out = []
        for row in await self.db.execute_fetchall(sql, args):
            n = len(by)
            item = dict(zip(by, row[:n]))
            requests, prompt, completion, cost, ok = row[n:]
            item.update(
                requests=requests, ok=int(ok or 0), prompt_tokens=int(prompt or 0),
                completion_tokens=int(completion or 0), cost_usd=round(float(cost or 0), 9),
            )
            out.append(item)
        return out

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
            for name, ok, failed in await self.db.execute_fetchall(sql, (since,)):
                out.append(Availability(scope, name, int(ok or 0), int(failed or 0)))
        return out

    async def count_usage(self) -> int:
        rows = list(await self.db.execute_fetchall("SELECT COUNT(*) FROM usage"))
        return int(rows[0][0]) if rows else 0
