"""The channels table on PostgreSQL: a mixin of relay/store_pg.py's PgStore (its pool).

Same methods and semantics as relay/store_channels.py. Every statement that bumps rev first takes a
transaction-scoped advisory lock (CHANNEL_REV_LOCK), so revs commit one at a time in rev order and a
poller reading `rev > last` never misses a change committed after a higher rev it already saw.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .store_api import CHANNEL_COLUMNS, ChannelRow, channel_from_row, channel_values
from .store_pg_schema import CHANNEL_REV_LOCK

__all__ = ["PgChannels"]

_NEXT = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM channels)"
_SELECT = f"SELECT {CHANNEL_COLUMNS} FROM channels"


class PgChannels:
    if TYPE_CHECKING:

        @property
        def pool(self) -> Any: ...

    async def channels_changed_since(self, rev: int) -> list[ChannelRow]:
        return [channel_from_row(r) for r in await self.pool.fetch(f"{_SELECT} WHERE rev > $1 ORDER BY rev", rev)]

    async def list_channels(self) -> list[ChannelRow]:
        rows = await self.pool.fetch(f"{_SELECT} WHERE NOT deleted ORDER BY created_at, name")
        return [channel_from_row(r) for r in rows]

    async def get_channel(self, name: str) -> ChannelRow | None:
        row = await self.pool.fetchrow(f"{_SELECT} WHERE name = $1 AND NOT deleted", name)
        return channel_from_row(row) if row else None

    async def _write(self, sql: str, *args: Any) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CHANNEL_REV_LOCK)
            status = str(await conn.execute(sql, *args))
        return int(status.rsplit(" ", 1)[-1])

    async def create_channel(self, row: ChannelRow) -> ChannelRow | None:
        settings, sealed, accounts, off, source = channel_values(row)
        now = time.time()
        n = await self._write(
            f"INSERT INTO channels ({CHANNEL_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,false,$8,$8,{_NEXT}) "
            "ON CONFLICT (name) DO UPDATE SET source = excluded.source, settings = excluded.settings, "
            "sealed = excluded.sealed, accounts = excluded.accounts, accounts_off = excluded.accounts_off, "
            "enabled = excluded.enabled, deleted = false, created_at = excluded.created_at, "
            "updated_at = excluded.updated_at, rev = excluded.rev WHERE channels.deleted",
            row.name, source, settings, sealed, accounts, off, row.enabled, now,
        )
        return await self.get_channel(row.name) if n else None

    async def update_channel(self, row: ChannelRow) -> ChannelRow | None:
        settings, sealed, accounts, off, _ = channel_values(row)
        n = await self._write(
            f"UPDATE channels SET settings = $1, sealed = $2, accounts = $3, accounts_off = $4, enabled = $5, "
            f"updated_at = $6, rev = {_NEXT} WHERE name = $7 AND rev = $8 AND NOT deleted",
            settings, sealed, accounts, off, row.enabled, time.time(), row.name, row.rev,
        )
        return await self.get_channel(row.name) if n else None

    async def delete_channel(self, name: str) -> bool:
        n = await self._write(
            f"UPDATE channels SET deleted = true, sealed = '{{}}', updated_at = $1, rev = {_NEXT} "
            "WHERE name = $2 AND NOT deleted",
            time.time(), name,
        )
        return n > 0

    async def sync_config_channel(self, row: ChannelRow) -> None:
        settings, _, accounts, _, _ = channel_values(row)
        await self._write(
            f"INSERT INTO channels ({CHANNEL_COLUMNS}) VALUES ($1,'config',$2,'{{}}',$3,'[]',$4,false,$5,$5,{_NEXT}) "
            "ON CONFLICT (name) DO UPDATE SET accounts_off = CASE WHEN channels.deleted OR channels.source <> 'config' "
            "THEN '[]' ELSE channels.accounts_off END, source = 'config', settings = excluded.settings, sealed = '{}', "
            "accounts = excluded.accounts, enabled = excluded.enabled, deleted = false, "
            "updated_at = excluded.updated_at, rev = excluded.rev WHERE channels.settings <> excluded.settings "
            "OR channels.accounts <> excluded.accounts OR channels.source <> 'config' OR channels.deleted "
            "OR channels.enabled <> excluded.enabled",
            row.name, settings, accounts, row.enabled, time.time(),
        )

    async def retire_config_channels(self, keep: Iterable[str]) -> list[str]:
        gone = [
            r[0] for r in await self.pool.fetch(
                "SELECT name FROM channels WHERE source = 'config' AND NOT deleted AND NOT (name = ANY($1::text[]))",
                list(keep),
            )
        ]
        for name in gone:
            await self.delete_channel(name)
        return gone
