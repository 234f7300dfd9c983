"""Client keys: extraction from headers, lookup by hash in memory, and the checks a key must pass.

Keys are never held in plaintext: a presented key is hashed (sha256; keys are long random strings, so a
fast hash is enough) and looked up in an in-memory mirror of the key table. The mirror is kept fresh by a
poller that reads only keys changed since its last look (the store's `rev`), so a key created, revoked or
topped up by the CLI in another process takes effect within a poll interval, and an unknown key never
costs a database query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Protocol

from .config import ClientKeyConfig, hash_key
from .errors import PermissionDenied, Unauthorized
from .store_api import Storage
from .tasks import stop
from .types import KeyRecord

__all__ = [
    "KeyCache", "KeyResolver", "authenticate", "check_key", "extract_google_key", "extract_key", "key_allows",
    "new_secret",
]

log = logging.getLogger("relay.auth")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class KeyResolver(Protocol):
    def resolve(self, secret: str) -> KeyRecord | None: ...

    def networks_of(self, key_id: str) -> tuple[_Network, ...]: ...


def new_secret() -> str:
    """sk- and 48 characters from `secrets` (286 bits)."""
    return "sk-" + secrets.token_urlsafe(36)


def config_key_record(k: ClientKeyConfig) -> KeyRecord:
    return KeyRecord(
        id=f"cfg-{k.name}", name=k.name, key_hash=k.key_hash, prefix=k.prefix, models=k.models, granted_usd=k.quota_usd,
    )


class ConfigKeys:
    """Keys listed in config.yaml only (no store): for tools and tests that run without a database."""

    def __init__(self, keys: Iterable[ClientKeyConfig]) -> None:
        self._by_hash = {k.key_hash: config_key_record(k) for k in keys}

    def resolve(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_key(secret))

    def networks_of(self, key_id: str) -> tuple[_Network, ...]:
        return ()


class KeyCache:
    """Every key of the store, by hash, refreshed by polling the store's change counter."""

    def __init__(self, store: Storage, poll_interval: float = 0.25) -> None:
        self._store = store
        self._poll = poll_interval
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self.networks: dict[str, tuple[_Network, ...]] = {}
        self._rev = 0
        self._task: asyncio.Task[None] | None = None

    def resolve(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_key(secret))

    def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    def networks_of(self, key_id: str) -> tuple[_Network, ...]:
        return self.networks.get(key_id, ())

    def records(self) -> list[KeyRecord]:
        return list(self._by_id.values())

    async def refresh(self) -> int:
        """Take in every key changed since the last refresh; returns how many."""
        changed = await self._store.keys_changed_since(self._rev)
        for k in changed:
            old = self._by_id.get(k.id)
            if old is not None and old.key_hash != k.key_hash:
                self._by_hash.pop(old.key_hash, None)
            self._by_id[k.id] = k
            self._by_hash[k.key_hash] = k
            self.networks[k.id] = tuple(_network(c) for c in k.ip_allow)
            self._rev = max(self._rev, k.rev)
        return len(changed)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="key-cache-poller")

    async def close(self) -> None:
        await stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.refresh()
            except Exception as e:  # noqa: BLE001 - a failed poll keeps the last known keys
                log.error("key refresh failed (%s); keeping the keys already loaded", type(e).__name__)


def _network(cidr: str) -> _Network:
    return ipaddress.ip_network(cidr, strict=False)


def extract_key(headers: Mapping[str, str]) -> str:
    """The client's key from `Authorization: Bearer ...` or `x-api-key`."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    raise Unauthorized(
        "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...' or 'x-api-key: sk-...'.",
        code="missing_api_key",
    )


def extract_google_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The client's key on the Gemini-native routes: `x-goog-api-key`, `?key=` (as Google's own clients
    send it), `Authorization: Bearer` or `x-api-key`. The query value is only read here, never kept."""
    key = headers.get("x-goog-api-key") or query.get("key")
    if key and key.strip():
        return key.strip()
    try:
        return extract_key(headers)
    except Unauthorized:
        raise Unauthorized(
            "Method doesn't allow unregistered callers: send the API key as 'x-goog-api-key', '?key=' or "
            "'Authorization: Bearer'.", code="missing_api_key",
        ) from None


def authenticate(resolver: KeyResolver, headers: Mapping[str, str], secret: str | None = None) -> KeyRecord:
    record = resolver.resolve(secret if secret is not None else extract_key(headers))
    if record is None:
        raise Unauthorized("Incorrect API key provided.")
    return record


def check_key(key: KeyRecord, remote: str | None, networks: tuple[_Network, ...] = ()) -> None:
    """The checks that do not depend on the request body: revoked, expired, calling address."""
    if key.status != "active":
        raise Unauthorized("This API key has been revoked.", code="key_revoked")
    if key.expires_at is not None and key.expires_at <= time.time():
        raise Unauthorized("This API key has expired.", code="key_expired")
    if networks:
        try:
            addr = ipaddress.ip_address(remote or "")
        except ValueError:
            addr = None
        if addr is None or not any(addr in n for n in networks):
            raise PermissionDenied("This API key may not be used from this address.", code="ip_not_allowed")


def key_allows(key: KeyRecord, model: str) -> bool:
    if not key.models:
        return True
    return any(fnmatchcase(model, pattern) for pattern in key.models)
