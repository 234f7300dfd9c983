"""What every store offers (the `Storage` Protocol) and the row shapes the SQLite and PostgreSQL stores share.

Nothing here does I/O. The ledger, the key cache, the CLI, the admin API and the operations pages are
written against `Storage`; relay/storage.py picks the implementation from the config's `database`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

from .types import KeyRecord, UsageRecord

__all__ = [
    "ADMIN_KEY_FIELDS", "CHANNEL_COLUMNS", "KEY_COLUMNS", "USAGE_COLUMNS", "Availability", "BucketCount",
    "ChannelRow", "SchemaError", "Storage", "StoreError", "channel_from_row", "channel_values", "column_value",
    "is_postgres", "key_from_row", "mask_url", "usage_row",
]

USAGE_COLUMNS = [f.name for f in fields(UsageRecord)]
usage_row = attrgetter(*USAGE_COLUMNS)  # a record as a flat tuple (dataclasses.astuple deep-copies: 10x slower)

# Columns the operator may change; spent_usd is the relay's alone.
ADMIN_KEY_FIELDS = (
    "name", "models", "status", "expires_at", "granted_usd", "rpm", "rpd", "tpm", "tpd", "ipm", "ip_allow", "group",
)
KEY_COLUMNS = (
    "id, name, key_hash, prefix, models, status, expires_at, granted_usd, spent_usd, rpm, rpd, tpm, tpd, ipm, "
    "ip_allow, grp, created_at, rev"
)


CHANNEL_COLUMNS = "name, source, settings, sealed, accounts, accounts_off, enabled, deleted, created_at, updated_at, rev"


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """A channel as the store keeps it (relay/channels.py turns it into a ChannelConfig).

    `settings` holds what may be shown (type, base_url, models, model_map, weight, priority, rpm, tpm,
    api_version, responses, vendor, test_model); `sealed` the secrets of a channel added through the API
    (keys, headers, proxy), each sealed with RELAY_SECRET (relay/secretbox.py); a channel from config.yaml
    has none: its secrets stay in each process's config. `accounts` names its keys by account_id (a
    hash that reveals nothing), `accounts_off` those the operator turned off. A deleted channel stays as a
    tombstone (deleted, secrets gone) with a rev, so pollers see it go.
    """

    name: str
    source: str  # "config" (seeded from config.yaml) or "api"
    settings: dict[str, Any]
    sealed: dict[str, str]
    accounts: tuple[str, ...]
    accounts_off: tuple[str, ...] = ()
    enabled: bool = True
    deleted: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    rev: int = 0


def channel_from_row(row: Sequence[Any]) -> ChannelRow:
    name, source, settings, sealed, accounts, off, enabled, deleted, created_at, updated_at, rev = row
    return ChannelRow(
        name=name, source=source, settings=orjson.loads(settings), sealed=orjson.loads(sealed),
        accounts=tuple(orjson.loads(accounts)), accounts_off=tuple(orjson.loads(off)), enabled=bool(enabled),
        deleted=bool(deleted), created_at=created_at, updated_at=updated_at, rev=rev,
    )


def channel_values(c: ChannelRow) -> tuple[str, str, str, str, str]:
    """settings, sealed, accounts, accounts_off as stored (JSON text), and the source."""
    return (
        orjson.dumps(c.settings, option=orjson.OPT_SORT_KEYS).decode(), orjson.dumps(c.sealed, option=orjson.OPT_SORT_KEYS).decode(),
        orjson.dumps(list(c.accounts)).decode(), orjson.dumps(list(c.accounts_off)).decode(), c.source,
    )


class StoreError(Exception):
    """The database cannot be reached or used (its message names why, never a password)."""


class SchemaError(StoreError):
    """The database's schema is newer than this relay knows: an older relay must not write to it."""


def key_from_row(row: Sequence[Any]) -> KeyRecord:
    (id_, name, key_hash, prefix, models, status, expires_at, granted, spent, rpm, rpd, tpm, tpd, ipm,
     ip_allow, grp, created_at, rev) = row
    return KeyRecord(
        id=id_, name=name, key_hash=key_hash, prefix=prefix, models=tuple(orjson.loads(models)), status=status,
        expires_at=expires_at, granted_usd=granted, spent_usd=spent, rpm=rpm, rpd=rpd, tpm=tpm, tpd=tpd, ipm=ipm,
        ip_allow=tuple(orjson.loads(ip_allow)), group=grp, created_at=created_at, rev=rev,
    )


def column_value(field: str, value: Any) -> tuple[str, Any]:
    """An admin field -> its column and stored value (lists are stored as JSON text in both stores)."""
    if field in ("models", "ip_allow"):
        return field, orjson.dumps(list(value or ())).decode()
    if field == "group":
        return "grp", value or "default"
    return field, value


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def mask_url(database: str) -> str:
    """The database as it may be printed: a URL's password replaced by ***."""
    if "://" not in database:
        return database
    try:
        parts = urlsplit(database)
        if parts.password is None:
            return database
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return database.split("://", 1)[0] + "://***"


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


@dataclass(frozen=True, slots=True)
class BucketCount:
    """Outcomes of one model or channel in one time bucket (start: unix seconds); counts only, no content.

    Latency is summed over the ok outcomes that carried one (`latency_n` of them).
    """

    scope: str  # "model" or "channel"
    name: str
    start: int
    ok: int = 0
    failed: int = 0
    latency_ms_sum: float = 0.0
    latency_n: int = 0


class Storage(Protocol):
    """Keys, balances and the usage ledger. Both stores keep the same semantics for every method.

    After open(), `schema_version` is the schema's version and `applied` the migrations this open applied.
    """

    schema_version: int
    applied: tuple[int, ...]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write_usage(self, rows: Sequence[UsageRecord], holder: str | None = None) -> int: ...

    async def lease(
        self, key_id: str, holder: str, need: float, fraction: float, ttl: float, at_least: float | None = None,
    ) -> tuple[float, float] | None: ...

    async def renew_leases(self, holder: str, ttl: float) -> dict[str, float]: ...

    async def release_leases(self, holder: str, key_ids: Iterable[str] | None = None) -> None: ...

    async def leased(self, key_id: str) -> float: ...

    async def bind_response(self, response_id: str, account: str, key_id: str, ttl: float) -> None: ...

    async def response_binding(self, response_id: str) -> tuple[str, str] | None: ...

    async def unbind_response(self, response_id: str) -> None: ...

    async def create_key(self, record: KeyRecord) -> KeyRecord: ...

    async def sync_config_key(self, record: KeyRecord) -> None: ...

    async def retire_config_keys(self, keep: Iterable[str]) -> None: ...

    async def get_key(self, ref: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def keys_changed_since(self, rev: int) -> list[KeyRecord]: ...

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None: ...

    async def top_up(self, key_id: str, usd: float) -> KeyRecord | None: ...

    async def spent_by_ledger(self) -> dict[str, float]: ...

    async def usage_summary(
        self, key_id: str | None = None, since: float | None = None, by: Sequence[str] = ("key", "model", "day")
    ) -> list[dict[str, Any]]: ...

    async def availability(self, since: float) -> list[Availability]: ...

    async def spent_between(self, key_id: str, since: float, until: float) -> float: ...
    # channels (relay/store_channels.py, relay/store_pg_channels.py)

    async def channels_changed_since(self, rev: int) -> list[ChannelRow]: ...

    async def list_channels(self) -> list[ChannelRow]: ...

    async def get_channel(self, name: str) -> ChannelRow | None: ...

    async def create_channel(self, row: ChannelRow) -> ChannelRow | None: ...

    async def update_channel(self, row: ChannelRow) -> ChannelRow | None: ...

    async def delete_channel(self, name: str) -> bool: ...

    async def sync_config_channel(self, row: ChannelRow) -> None: ...

    async def retire_config_channels(self, keep: Iterable[str]) -> list[str]: ...

    async def count_usage(self) -> int: ...

    # availability history (relay/store_buckets.py, relay/store_pg_buckets.py)

    async def add_buckets(self, rows: Sequence[BucketCount]) -> None: ...

    async def buckets_since(self, since: int, width: int) -> list[BucketCount]: ...

    async def bucket_totals(self, since: Sequence[int]) -> dict[tuple[str, str], list[tuple[int, int]]]: ...

    async def prune_buckets(self, before: int) -> int: ...
