"""The key table on PostgreSQL: a mixin of relay/store_pg.py's PgStore (its pool).

Same methods and semantics as relay/store_keys.py. Every statement that bumps rev runs in `_bump`, under
the transaction-scoped advisory lock REV_LOCK, so revs commit one at a time in rev order and a key cache
reading `rev > last` never misses a change committed after a higher rev it already saw.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .store_api import ADMIN_KEY_FIELDS, KEY_COLUMNS, column_value, key_from_row
from .store_pg_schema import REV_LOCK
from .types import KeyRecord

__all__ = ["NEXT_REV", "PgKeys"]

NEXT_REV = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM keys)"  # the next key rev (also `relay db copy`'s)


class PgKeys:
    if TYPE_CHECKING:

        @property
        def pool(self) -> Any: ...

    async def _bump(self, sql: str, *args: Any) -> str:
        """Run a statement that bumps rev, holding the rev lock until it commits (commit order = rev order)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", REV_LOCK)
            return str(await conn.execute(sql, *args))

    async def create_key(self, record: KeyRecord) -> KeyRecord:
        """Insert a new key; id, hash and prefix come from the caller (the secret never reaches the store)."""
        await self._bump(
            f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,0,$9,$10,$11,$12,$13,$14,$15,$16,"
            f"{NEXT_REV})",
            record.id, record.name, record.key_hash, record.prefix, column_value("models", record.models)[1],
            record.status, record.expires_at, record.granted_usd, record.rpm, record.rpd, record.tpm, record.tpd,
            record.ipm, column_value("ip_allow", record.ip_allow)[1], record.group or "default",
            record.created_at or time.time(),
        )
        got = await self.get_key(record.id)
        assert got is not None
        return got

    async def sync_config_key(self, record: KeyRecord) -> None:
        """Keys listed in config.yaml: inserted once (with their starting balance), their hash, name and
        models kept in step (not the balance: see the SQLite store)."""
        await self._bump(
            f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,'active',NULL,$7,0,NULL,NULL,NULL,NULL,NULL,"
            f"'[]','default',$6,{NEXT_REV}) ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, "
            "name = excluded.name, prefix = excluded.prefix, models = excluded.models, status = 'active', "
            "rev = excluded.rev WHERE keys.key_hash <> excluded.key_hash OR keys.models <> excluded.models "
            "OR keys.status <> 'active'",
            record.id, record.name, record.key_hash, record.prefix, column_value("models", record.models)[1],
            time.time(), record.granted_usd,
        )

    async def retire_config_keys(self, keep: Iterable[str]) -> None:
        """A key removed from config.yaml stops working: revoke config keys whose id is not in `keep`."""
        await self._bump(
            f"UPDATE keys SET status = 'revoked', rev = {NEXT_REV} WHERE id LIKE 'cfg-%' AND status = 'active' "
            "AND NOT (id = ANY($1::text[]))",
            list(keep),
        )

    async def get_key(self, ref: str) -> KeyRecord | None:
        """By id, or by displayed prefix when exactly one key has it."""
        row = await self.pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1", ref)
        if row is None:
            rows = await self.pool.fetch(f"SELECT {KEY_COLUMNS} FROM keys WHERE prefix = $1 LIMIT 2", ref)
            row = rows[0] if len(rows) == 1 else None
        return key_from_row(row) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        return [key_from_row(r) for r in await self.pool.fetch(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id")]

    async def keys_changed_since(self, rev: int) -> list[KeyRecord]:
        rows = await self.pool.fetch(f"SELECT {KEY_COLUMNS} FROM keys WHERE rev > $1 ORDER BY rev", rev)
        return [key_from_row(r) for r in rows]

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Change admin fields; unknown fields are a programming error."""
        sets, args = [], []
        for name, value in changes.items():
            if name not in ADMIN_KEY_FIELDS:
                raise ValueError(f"not an admin field: {name}")
            column, v = column_value(name, value)
            args.append(v)
            sets.append(f"{column} = ${len(args)}")
        if sets:
            args.append(key_id)
            await self._bump(f"UPDATE keys SET {', '.join(sets)}, rev = {NEXT_REV} WHERE id = ${len(args)}", *args)
        return await self.get_key(key_id)

    async def top_up(self, key_id: str, usd: float) -> KeyRecord | None:
        """Add to what the key was granted (atomic in the database: concurrent top-ups all count)."""
        await self._bump(
            f"UPDATE keys SET granted_usd = granted_usd + $1, rev = {NEXT_REV} WHERE id = $2 AND granted_usd IS NOT NULL",
            usd, key_id,
        )
        return await self.get_key(key_id)
