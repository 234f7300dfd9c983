"""The only asyncpg user: the store on PostgreSQL, for many relay processes on many machines.

Same methods and semantics as relay/store.py's Store (see relay/store_api.py's Storage); a small pool per
process instead of one connection, so the ledger's flusher, the key poller and the admin API never share a
transaction.

The key table's `rev` is what every process's key cache polls (`keys_changed_since(last)` every 0.25 s):
a rev must never become visible after a higher one was seen. Each transaction that bumps rev first takes a
transaction-scoped advisory lock, so rev bumps commit one at a time, in rev order. The relay's own spent_usd
updates (with the ledger rows that account for them) take row locks only and do not bump rev.
The key table's SQL is in relay/store_pg_keys.py, the channels' in store_pg_channels.py (mixins on this pool).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from .store_api import (
    KEY_COLUMNS,
    USAGE_COLUMNS,
    Availability,
    SchemaError,
    StoreError,
    column_value,
    usage_row,
)
from .store_pg_buckets import PgBucketsSql
from .store_pg_channels import PgChannels
from .store_pg_keys import NEXT_REV, PgKeys
from .store_pg_schema import MIGRATIONS, REV_LOCK, SCHEMA_LOCK
from .store_spend import PgSpend
from .types import KeyRecord, UsageRecord

__all__ = ["DATABASE_ERRORS", "PgStore"]

log = logging.getLogger("relay.store")

# What a failing server or connection raises mid-command (the CLI turns these into one line).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)
# A row the database refuses (a CHECK, a value out of range, a value of the wrong type): that row alone.
_BAD_ROW = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError, ValueError, TypeError, OverflowError)

_COLS = ", ".join(USAGE_COLUMNS)
_TYPES = {
    "ts": "float8", "account": "int4", "status": "int4", "prompt_tokens": "int8", "completion_tokens": "int8",
    "latency_ms": "float8", "ttft_ms": "float8", "stream": "bool", "attempts": "int4", "cost_usd": "float8",
    "cache_read_tokens": "int8", "cache_write_tokens": "int8",
}
# A whole batch as one statement (one array per column); RETURNING tells which rows were new, so a request
# id already written (a retried batch) is skipped and its cost is not counted again.
_INSERT_MANY = (
    f"INSERT INTO usage ({_COLS}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(USAGE_COLUMNS, 1))
    + ") ON CONFLICT (request_id) DO NOTHING RETURNING key_id, cost_usd"
)
_INSERT_ONE = (
    f"INSERT INTO usage ({_COLS}) VALUES ({', '.join(f'${i}' for i in range(1, len(USAGE_COLUMNS) + 1))}) "
    "ON CONFLICT (request_id) DO NOTHING RETURNING key_id, cost_usd"
)
# Rows are locked in key order first (keys, then the holder's leases), so two processes writing batches
# that share keys, or a batch and a lease call, wait for each other instead of deadlocking.
_LOCK_KEYS = "SELECT 1 FROM keys WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
_ADD_SPENT = (
    "UPDATE keys SET spent_usd = keys.spent_usd + s.usd FROM unnest($1::text[], $2::float8[]) AS s(id, usd) "
    "WHERE keys.id = s.id"
)
_LOCK_LEASES = "SELECT 1 FROM leases WHERE holder = $1 AND key_id = ANY($2::text[]) ORDER BY key_id FOR UPDATE"
_PAY_FROM_LEASES = (
    "UPDATE leases SET amount_usd = GREATEST(leases.amount_usd - s.usd, 0) "
    "FROM unnest($2::text[], $3::float8[]) AS s(id, usd) WHERE leases.holder = $1 AND leases.key_id = s.id"
)
_NOW = "extract(epoch from now())::float8"  # the server's clock: every process's leases expire by one clock
# A lease is granted when the free balance covers what is needed within this much (float sums of prices).
_LEASE_EPSILON = 1e-9
_KEY_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, 18))


class PgStore(PgSpend, PgBucketsSql, PgChannels, PgKeys):
    def __init__(self, url: str, max_connections: int = 4) -> None:
        self.url = url
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        self.schema_version = 0
        self.applied: tuple[int, ...] = ()

    async def open(self) -> None:
        try:
            # 5 s: an unreachable server is one clear error at start, not a minute's wait
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self._max, timeout=5, command_timeout=60,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as e:
            raise StoreError(f"cannot connect: {_reason(e)}") from None
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "PgStore.open() was not awaited"
        return self._pool

    async def _migrate(self) -> None:
        """Apply the migrations the database lacks, under an advisory lock (one process at a time)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at double precision NOT NULL)"
            )
            version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            if version > len(MIGRATIONS):
                raise SchemaError(
                    f"schema version {version} is newer than this relay knows ({len(MIGRATIONS)}): upgrade the relay"
                )
            applied = tuple(range(version + 1, len(MIGRATIONS) + 1))
            for number in applied:
                await conn.execute(MIGRATIONS[number - 1])
                await conn.execute("INSERT INTO schema_version VALUES ($1, $2)", number, time.time())
        self.schema_version, self.applied = len(MIGRATIONS), applied

    # -- ledger -------------------------------------------------------------------------------------------

    async def write_usage(self, rows: Sequence[UsageRecord], holder: str | None = None) -> int:
        """Write rows, and add their cost to each key's spent, in one transaction; returns rows refused.

        With a `holder`, the same transaction lowers that holder's balance lease of each key by the cost
        added to its spent (the lease paid for it). If the batch fails as a whole, each row is tried on its own (a savepoint each) so one bad row cannot
        drop the others. A request id already written is skipped and its cost not counted again. A failure
        of the database itself propagates: the caller keeps the rows.
        """
        if not rows:
            return 0
        values = [usage_row(r) for r in rows]
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    written = await conn.fetch(_INSERT_MANY, *(list(c) for c in zip(*values)))
                    await _add_spent(conn, written, holder)
                return 0
            except _BAD_ROW:
                pass
            refused = 0
            async with conn.transaction():
                written = []
                for v in values:
                    try:
                        async with conn.transaction():
                            written.extend(await conn.fetch(_INSERT_ONE, *v))
                    except _BAD_ROW as e:
                        refused += 1
                        log.error("usage row %s refused by the store: %s", v[0], type(e).__name__)
                await _add_spent(conn, written, holder)
            return refused

    async def spent_by_ledger(self) -> dict[str, float]:
        rows = await self.pool.fetch("SELECT key_id, SUM(cost_usd) FROM usage GROUP BY key_id")
        return {k: float(v or 0) for k, v in rows}

    async def count_usage(self) -> int:
        return int(await self.pool.fetchval("SELECT COUNT(*) FROM usage"))

    # -- balance leases -----------------------------------------------------------------------------------

    async def lease(
        self, key_id: str, holder: str, need: float, fraction: float, ttl: float, at_least: float | None = None,
    ) -> tuple[float, float] | None:
        """Grow `holder`'s lease of the key's balance and extend it `ttl` seconds (as Store.lease does).

        Returns (the lease's amount now, what is still free after it), or None: the key has no balance
        limit (or is gone). The key's row is locked first (FOR UPDATE), so lease calls from any number of
        processes go one at a time per key and never hand out more than granted - spent - live leases.
        """
        least = need if at_least is None else at_least
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT granted_usd, spent_usd, {_NOW} FROM keys WHERE id = $1 FOR UPDATE", key_id)
            if row is None or row[0] is None:
                return None
            granted, spent, now = row
            mine = others = 0.0
            for h, amount in await conn.fetch(
                "SELECT holder, amount_usd FROM leases WHERE key_id = $1 AND expires_at > $2", key_id, now
            ):
                if h == holder:
                    mine = amount
                else:
                    others += amount
            free = granted - spent - others - mine
            grant = 0.0
            if free > 0 and free + _LEASE_EPSILON >= least:
                grant = min(free, max(need, free * fraction))
            await conn.execute("DELETE FROM leases WHERE key_id = $1 AND expires_at <= $2", key_id, now)
            await conn.execute(
                "INSERT INTO leases (key_id, holder, amount_usd, expires_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (key_id, holder) DO UPDATE SET amount_usd = excluded.amount_usd, "
                "expires_at = excluded.expires_at",
                key_id, holder, mine + grant, now + ttl,
            )
        return mine + grant, max(free - grant, 0.0)

    async def renew_leases(self, holder: str, ttl: float) -> dict[str, float]:
        """Extend every live lease of `holder` by `ttl` seconds; returns key id -> amount of those still live.

        A lease missing from the answer has expired: its money may already be leased to another process.
        """
        rows = await self.pool.fetch(
            f"WITH live AS (SELECT key_id FROM leases WHERE holder = $1 AND expires_at > {_NOW} "
            "ORDER BY key_id FOR UPDATE) "
            f"UPDATE leases SET expires_at = {_NOW} + $2 FROM live WHERE leases.holder = $1 AND leases.key_id = live.key_id "
            "RETURNING leases.key_id, leases.amount_usd",
            holder, float(ttl),
        )
        return {k: float(a) for k, a in rows}

    async def release_leases(self, holder: str, key_ids: Iterable[str] | None = None) -> None:
        """Give back what `holder` leased (of these keys, or all): call only after its charges are written."""
        if key_ids is None:
            await self.pool.execute("DELETE FROM leases WHERE holder = $1", holder)
        else:
            await self.pool.execute("DELETE FROM leases WHERE holder = $1 AND key_id = ANY($2::text[])", holder, list(key_ids))

    async def leased(self, key_id: str) -> float:
        """Money of the key held by live leases (granted - spent - this is what no process holds)."""
        return float(await self.pool.fetchval(
            f"SELECT COALESCE(SUM(amount_usd), 0) FROM leases WHERE key_id = $1 AND expires_at > {_NOW}", key_id
        ))

    # -- response bindings (see relay.bindings) --------------------------------------------------------

    async def bind_response(self, response_id: str, account: str, key_id: str, ttl: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO response_bindings VALUES ($1, $2, $3, {_NOW} + $4) ON CONFLICT (response_id) DO UPDATE "
                "SET account = excluded.account, key_id = excluded.key_id, expires_at = excluded.expires_at",
                response_id, account, key_id, ttl,
            )
            await conn.execute(f"DELETE FROM response_bindings WHERE expires_at <= {_NOW}")

    async def response_binding(self, response_id: str) -> tuple[str, str] | None:
        """(account, key id) of a live binding, or None."""
        row = await self.pool.fetchrow(
            f"SELECT account, key_id FROM response_bindings WHERE response_id = $1 AND expires_at > {_NOW}",
            response_id,
        )
        return (str(row[0]), str(row[1])) if row else None

    async def unbind_response(self, response_id: str) -> None:
        await self.pool.execute("DELETE FROM response_bindings WHERE response_id = $1", response_id)

    # -- reads behind /status and `relay usage` -----------------------------------------------------------

    async def usage_summary(
        self, key_id: str | None = None, since: float | None = None, by: Sequence[str] = ("key", "model", "day")
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost grouped by any of key, model, day (UTC)."""
        columns = {"key": "key_id", "model": "model", "day": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}
        group = [columns[b] for b in by]
        where: list[str] = []
        args: list[Any] = []
        if key_id is not None:
            args.append(key_id)
            where.append(f"key_id = ${len(args)}")
        if since is not None:
            args.append(float(since))
            where.append(f"ts >= ${len(args)}")
        select = [*group, "COUNT(*)", "SUM(prompt_tokens)", "SUM(completion_tokens)", "SUM(cost_usd)",
                  "COUNT(*) FILTER (WHERE status < 400)"]
        sql = f"SELECT {', '.join(select)} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if group:
            sql += f" GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}"
        out = []
        for row in await self.pool.fetch(sql, *args):
            n = len(by)
            item = dict(zip(by, tuple(row)[:n]))
            requests, prompt, completion, cost, ok = tuple(row)[n:]
            item.update(
                requests=int(requests), ok=int(ok or 0), prompt_tokens=int(prompt or 0),
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
                f"SELECT {scope}, COUNT(*) FILTER (WHERE status < 400), "
                f"COUNT(*) FILTER (WHERE status >= 500 OR end_reason = 'upstream_error') "
                f"FROM usage WHERE ts >= $1 AND {scope} IS NOT NULL GROUP BY {scope} ORDER BY {scope}"
            )
            for name, ok, failed in await self.pool.fetch(sql, float(since)):
                out.append(Availability(scope, name, int(ok or 0), int(failed or 0)))
        return out

    # -- `relay db copy` ----------------------------------------------------------------------------------

    async def copy_in(
        self, keys: Sequence[KeyRecord], usage: Iterable[Sequence[tuple[Any, ...]]]
    ) -> tuple[int, int, int, int]:
        """Copy another store's keys and ledger in, in one transaction; returns keys copied, keys already
        there, ledger rows copied, ledger rows already there.

        Idempotent: a key whose id is here stays as it is; a ledger row whose request id is here is skipped.
        spent_usd is copied as it was (the ledger copy never adds to it), and keys get revs of this
        database, after any key already here, so every key cache sees them.
        `usage` yields batches of rows, each a tuple in USAGE_COLUMNS order.
        """
        keys_copied = rows_total = 0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", REV_LOCK)
            for k in keys:
                status = await conn.execute(
                    f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({_KEY_PLACEHOLDERS}, {NEXT_REV}) ON CONFLICT DO NOTHING",
                    k.id, k.name, k.key_hash, k.prefix, column_value("models", k.models)[1], k.status, k.expires_at,
                    k.granted_usd, k.spent_usd, k.rpm, k.rpd, k.tpm, k.tpd, k.ipm,
                    column_value("ip_allow", k.ip_allow)[1], k.group or "default", k.created_at,
                )
                keys_copied += _count(status)
            await conn.execute(
                f"CREATE TEMP TABLE usage_in ON COMMIT DROP AS SELECT 0::bigint AS ord, {_COLS} FROM usage WITH NO DATA"
            )
            for batch in usage:
                records = [(rows_total + i, *_typed(r)) for i, r in enumerate(batch)]
                if records:
                    await conn.copy_records_to_table("usage_in", records=records, columns=["ord", *USAGE_COLUMNS])
                rows_total += len(records)
            status = await conn.execute(
                f"INSERT INTO usage ({_COLS}) SELECT {_COLS} FROM usage_in ORDER BY ord "
                "ON CONFLICT (request_id) DO NOTHING"
            )
            rows_copied = _count(status)
        return keys_copied, len(keys) - keys_copied, rows_copied, rows_total - rows_copied


async def _add_spent(conn: asyncpg.Connection, written: Iterable[asyncpg.Record], holder: str | None) -> None:
    spent: dict[str, float] = {}
    for key_id, cost in written:
        if cost:
            spent[key_id] = spent.get(key_id, 0.0) + cost
    if spent:
        ids, usd = list(spent), list(spent.values())
        await conn.execute(_LOCK_KEYS, ids)
        await conn.execute(_ADD_SPENT, ids, usd)
        if holder is not None:
            await conn.execute(_LOCK_LEASES, holder, ids)
            await conn.execute(_PAY_FROM_LEASES, holder, ids, usd)


_STREAM = USAGE_COLUMNS.index("stream")


def _typed(row: Sequence[Any]) -> tuple[Any, ...]:
    """A ledger row from SQLite (stream stored as 0/1) as the binary COPY wants it."""
    out = list(row)
    out[_STREAM] = bool(out[_STREAM])
    return tuple(out)


def _count(status: str) -> int:
    """The row count of a command tag such as 'INSERT 0 12'."""
    return int(status.rsplit(" ", 1)[-1])


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
