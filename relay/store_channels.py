"""The channels table on SQLite: a mixin of relay/store.py's Store (its connection and write lock).

`rev` is one counter over the table (like the keys' rev): every write takes the next value, so a poller
reads only `rev > last` through the index. Writes hold the write lock (BEGIN IMMEDIATE through the
store's own transaction lock), so revs commit in order. A deleted channel stays as a tombstone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .store_api import CHANNEL_COLUMNS, ChannelRow, channel_from_row, channel_values

__all__ = ["SqliteChannels"]

_NEXT = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM channels)"
_SELECT = f"SELECT {CHANNEL_COLUMNS} FROM channels"


class SqliteChannels:
    _tx: asyncio.Lock

    if TYPE_CHECKING:

        @property
        def db(self) -> Any: ...

    async def channels_changed_since(self, rev: int) -> list[ChannelRow]:
        return [channel_from_row(r) for r in await self.db.execute_fetchall(f"{_SELECT} WHERE rev > ? ORDER BY rev", (rev,))]

    async def list_channels(self) -> list[ChannelRow]:
        return [channel_from_row(r) for r in await self.db.execute_fetchall(f"{_SELECT} WHERE deleted = 0 ORDER BY created_at, name")]

    async def get_channel(self, name: str) -> ChannelRow | None:
        rows = await self.db.execute_fetchall(f"{_SELECT} WHERE name = ? AND deleted = 0", (name,))
        return channel_from_row(rows[0]) if rows else None

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        async with self._tx:
            try:
                cur = await self.db.execute(sql, args)
                count = int(cur.rowcount)
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise
        return count

    async def create_channel(self, row: ChannelRow) -> ChannelRow | None:
        """Insert a new channel (over a tombstone of the same name); None when a live one has the name."""
        settings, sealed, accounts, off, source = channel_values(row)
        now = time.time()
        n = await self._write(
            f"INSERT INTO channels ({CHANNEL_COLUMNS}) VALUES (?,?,?,?,?,?,?,0,?,?,{_NEXT}) ON CONFLICT (name) DO UPDATE "
            "SET source = excluded.source, settings = excluded.settings, sealed = excluded.sealed, "
            "accounts = excluded.accounts, accounts_off = excluded.accounts_off, enabled = excluded.enabled, "
            "deleted = 0, created_at = excluded.created_at, updated_at = excluded.updated_at, rev = excluded.rev "
            "WHERE channels.deleted = 1",
            (row.name, source, settings, sealed, accounts, off, int(row.enabled), now, now),
        )
        return await self.get_channel(row.name) if n else None

    async def update_channel(self, row: ChannelRow) -> ChannelRow | None:
        """Write a channel read at `row.rev`; None if it changed (or went) meanwhile: read it again."""
        settings, sealed, accounts, off, _ = channel_values(row)
        n = await self._write(
            f"UPDATE channels SET settings = ?, sealed = ?, accounts = ?, accounts_off = ?, enabled = ?, "
            f"updated_at = ?, rev = {_NEXT} WHERE name = ? AND rev = ? AND deleted = 0",
            (settings, sealed, accounts, off, int(row.enabled), time.time(), row.name, row.rev),
        )
        return await self.get_channel(row.name) if n else None

    async def delete_channel(self, name: str) -> bool:
        n = await self._write(
            f"UPDATE channels SET deleted = 1, sealed = '{{}}', updated_at = ?, rev = {_NEXT} WHERE name = ? AND deleted = 0",
            (time.time(), name),
        )
        return n > 0

    async def sync_config_channel(self, row: ChannelRow) -> None:
        """A channel of config.yaml: written when new or changed (settings, accounts); what the operator
        turned off stays off, unless the row was a tombstone or an API channel of the same name."""
        settings, _, accounts, _, _ = channel_values(row)
        now = time.time()
        await self._write(
            f"INSERT INTO channels ({CHANNEL_COLUMNS}) VALUES (?,'config',?,'{{}}',?,'[]',?,0,?,?,{_NEXT}) "
            "ON CONFLICT (name) DO UPDATE SET accounts_off = CASE WHEN channels.deleted = 1 OR channels.source != 'config' "
            "THEN '[]' ELSE channels.accounts_off END, source = 'config', settings = excluded.settings, sealed = '{}', "
            "accounts = excluded.accounts, enabled = excluded.enabled, deleted = 0, updated_at = excluded.updated_at, "
            "rev = excluded.rev WHERE channels.settings != excluded.settings OR channels.accounts != excluded.accounts "
            "OR channels.source != 'config' OR channels.deleted = 1 OR channels.enabled != excluded.enabled",
            (row.name, settings, accounts, int(row.enabled), now, now),
        )

    async def retire_config_channels(self, keep: Iterable[str]) -> list[str]:
        """Channels seeded from config.yaml that it no longer lists are deleted; returns their names."""
        names = list(keep)
        where = f"source = 'config' AND deleted = 0 AND name NOT IN ({', '.join('?' for _ in names)})"
        gone = [r[0] for r in await self.db.execute_fetchall(f"SELECT name FROM channels WHERE {where}", names)]
        for name in gone:
            await self.delete_channel(name)
        return gone
