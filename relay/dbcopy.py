"""`relay db copy`: an embedded SQLite deployment (keys, balances, the whole ledger, the channels added
through the admin API) into PostgreSQL.

The SQLite file is only read (opened read-only, one read transaction, so a relay still writing to it is
copied as of one moment); PgStore.copy_in writes everything in one transaction and skips what is already
there, so running the copy again copies nothing twice. Channels added through the API are copied as they
are stored (their secrets stay sealed: the relays on PostgreSQL need the same RELAY_SECRET); one whose name
PostgreSQL already has is left as it is there. config.yaml's channels are seeded by each relay itself.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from .store_api import CHANNEL_COLUMNS, KEY_COLUMNS, USAGE_COLUMNS, ChannelRow, channel_from_row, key_from_row
from .store_pg import PgStore
from .types import KeyRecord

__all__ = ["CopyCounts", "NotARelayDatabase", "check_source", "copy_sqlite"]

# 10,000 rows a COPY: a few MB in memory at a time, whatever the ledger's size.
BATCH = 10_000


class NotARelayDatabase(Exception):
    """The --from file is missing, not SQLite, or holds no relay tables."""


@dataclass(frozen=True, slots=True)
class CopyCounts:
    keys_copied: int
    keys_present: int
    usage_copied: int
    usage_present: int
    channels_copied: int = 0
    channels_present: int = 0

    def __str__(self) -> str:
        text = (f"keys: {self.keys_copied} copied, {self.keys_present} already there; "
                f"usage: {self.usage_copied} copied, {self.usage_present} already there")
        if self.channels_copied or self.channels_present:
            text += f"; channels: {self.channels_copied} copied, {self.channels_present} already there"
        return text


def _connect(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise NotARelayDatabase(f"--from: no such file: {path}")
    db = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=5)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        db.close()
        raise NotARelayDatabase(f"--from: {path} is not a SQLite database ({e})") from None
    if "usage" not in tables:  # a ledger from before keys were stored has no keys table: no keys to copy
        db.close()
        raise NotARelayDatabase(f"--from: {path} is not a relay database (it has no usage table)")
    return db


def check_source(path: str) -> None:
    """Refuse a --from file that is not a relay database before anything is written anywhere."""
    _connect(path).close()


def _usage_batches(db: sqlite3.Connection) -> Iterator[Sequence[tuple[Any, ...]]]:
    present = {r[1] for r in db.execute("PRAGMA table_info(usage)")}
    # a ledger from before billing has no cost_usd: its rows cost 0, as the SQLite store reads them
    # (nor, before version 5, the cache token counts: none were recorded, 0)
    missing = {"cost_usd": "0.0", "client": "NULL"}  # what an older file's rows lack (default: 0)
    select = ", ".join(c if c in present else f"{missing.get(c, '0')} AS {c}" for c in USAGE_COLUMNS)
    cur = db.execute(f"SELECT {select} FROM usage ORDER BY id")
    while batch := cur.fetchmany(BATCH):
        yield batch


async def copy_sqlite(path: str, store: PgStore) -> CopyCounts:
    """Copy the relay database at `path` into the opened PostgreSQL store."""
    with contextlib.closing(_connect(path)) as db:
        db.execute("BEGIN")  # one snapshot for keys and ledger alike
        keys: list[KeyRecord] = []
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keys'").fetchone():
            keys = [key_from_row(r) for r in db.execute(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY rev")]
        channels: list[ChannelRow] = []
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'channels'").fetchone():
            channels = [channel_from_row(r) for r in db.execute(
                f"SELECT {CHANNEL_COLUMNS} FROM channels WHERE source = 'api' AND deleted = 0 ORDER BY created_at, name")]
        counts = await store.copy_in(keys, _usage_batches(db))
    copied = 0
    for row in channels:
        copied += await store.create_channel(replace(row, rev=0)) is not None
    return CopyCounts(*counts, copied, len(channels) - copied)
