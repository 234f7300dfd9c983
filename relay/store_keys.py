"""The key table on SQLite: a mixin of relay/store.py's Store (its connection).

The operator's writes (CLI, admin API) change only the admin columns and take the next `rev`, which every
process's key cache polls (`keys_changed_since`); the relay's own spent_usd updates are store.py's, with
the ledger rows that account for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .store_api import ADMIN_KEY_FIELDS, KEY_COLUMNS, column_value, key_from_row
from .types import KeyRecord

__all__ = ["SqliteKeys"]

_NEXT_REV = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM keys)"


class SqliteKeys:
    if TYPE_CHECKING:

        @property
        def db(self) -> Any: ...

    async def create_key(self, record: KeyRecord) -> KeyRecord:
        """Insert a new key; id, hash and prefix come from the caller (the secret never reaches the store)."""
        now = time.time()
        await self.db.execute(
            f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,0,?,?,?,?,?,?,?,?,{_NEXT_REV})",
            (
                record.id, record.name, record.key_hash, record.prefix, column_value("models", record.models)[1],
                record.status, record.expires_at, record.granted_usd, record.rpm, record.rpd, record.tpm,
                record.tpd, record.ipm, column_value("ip_allow", record.ip_allow)[1], record.group or "default",
                record.created_at or now,
            ),
        )
        await self.db.commit()
        got = await self.get_key(record.id)
        assert got is not None
        return got

    async def sync_config_key(self, record: KeyRecord) -> None:
        """Keys listed in config.yaml: inserted once (with their starting balance), their hash, name and
        models kept in step. The balance is not: top-ups made since would be undone at each start."""
        await self.db.execute(
            f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,'active',NULL,?,0,NULL,NULL,NULL,NULL,NULL,"
            f"'[]','default',?,{_NEXT_REV}) ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, "
            "name = excluded.name, prefix = excluded.prefix, models = excluded.models, status = 'active', "
            "rev = excluded.rev WHERE keys.key_hash != excluded.key_hash OR keys.models != excluded.models "
            "OR keys.status != 'active'",
            (record.id, record.name, record.key_hash, record.prefix, column_value("models", record.models)[1],
             record.granted_usd, time.time()),
        )
        await self.db.commit()

    async def retire_config_keys(self, keep: Iterable[str]) -> None:
        """A key removed from config.yaml stops working: revoke config keys whose id is not in `keep`."""
        ids = list(keep)
        await self.db.execute(
            f"UPDATE keys SET status = 'revoked', rev = {_NEXT_REV} WHERE id LIKE 'cfg-%' AND status = 'active' "
            f"AND id NOT IN ({', '.join('?' for _ in ids)})",
            ids,
        )
        await self.db.commit()

    async def get_key(self, ref: str) -> KeyRecord | None:
        """By id, or by displayed prefix when exactly one key has it."""
        rows = list(await self.db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", (ref,)))
        row = rows[0] if rows else None
        if row is None:
            rows = list(await self.db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM keys WHERE prefix = ? LIMIT 2", (ref,)))
            row = rows[0] if len(rows) == 1 else None
        return key_from_row(row) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        return [key_from_row(r) for r in await self.db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id")]

    async def keys_changed_since(self, rev: int) -> list[KeyRecord]:
        rows = await self.db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM keys WHERE rev > ? ORDER BY rev", (rev,))
        return [key_from_row(r) for r in rows]

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Change admin fields; unknown fields are a programming error."""
        sets, args = [], []
        for name, value in changes.items():
            if name not in ADMIN_KEY_FIELDS:
                raise ValueError(f"not an admin field: {name}")
            column, v = column_value(name, value)
            sets.append(f"{column} = ?")
            args.append(v)
        if sets:
            await self.db.execute(
                f"UPDATE keys SET {', '.join(sets)}, rev = {_NEXT_REV} WHERE id = ?", (*args, key_id)
            )
            await self.db.commit()
        return await self.get_key(key_id)

    async def top_up(self, key_id: str, usd: float) -> KeyRecord | None:
        """Add to what the key was granted (atomic in the database: concurrent top-ups all count)."""
        await self.db.execute(
            f"UPDATE keys SET granted_usd = granted_usd + ?, rev = {_NEXT_REV} WHERE id = ? AND granted_usd IS NOT NULL",
            (usd, key_id),
        )
        await self.db.commit()
        return await self.get_key(key_id)
