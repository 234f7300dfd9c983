"""Client key extraction and lookup by hash.

Keys are never held in plaintext: a presented key is hashed (sha256; keys are long random strings, so a
fast hash is enough) and looked up in memory. `KeyResolver` is the narrow interface a persistent key
store implements too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from .config import ClientKeyConfig, hash_key
from .errors import Unauthorized
from .types import KeyRecord

__all__ = ["ConfigKeys", "KeyResolver", "authenticate", "extract_key"]


class KeyResolver(Protocol):
    def resolve(self, secret: str) -> KeyRecord | None: ...


class ConfigKeys:
    """Keys listed in config.yaml (bootstrap keys)."""

    def __init__(self, keys: Iterable[ClientKeyConfig]) -> None:
        self._by_hash = {
            k.key_hash: KeyRecord(id=f"cfg:{k.name}", name=k.name, key_hash=k.key_hash, prefix=k.prefix, models=k.models)
            for k in keys
        }

    def resolve(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_key(secret))


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


def authenticate(resolver: KeyResolver, headers: Mapping[str, str]) -> KeyRecord:
    record = resolver.resolve(extract_key(headers))
    if record is None:
        raise Unauthorized("Incorrect API key provided.")
    return record
