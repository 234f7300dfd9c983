"""The key service: the checks and operations on client keys that the CLI (`relay keys ...`) and the admin
API (/admin/keys) both call, so the rules are written once: field checks (`key_fields`, `parse_time`),
creation (the secret is returned once and stored only as a hash), lookup by id or prefix, revocation and
top-ups. Errors are the relay's own (OpenAI's shape on the API; one line naming the flag on the CLI).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from .admin_schema import KEY_FIELDS, FieldError, Spec, iso_time, unix_time
from .auth import new_secret
from .config import hash_key
from .errors import InvalidRequest, NotFound, RelayError
from .store_api import Storage
from .types import KeyRecord

__all__ = [
    "LIMITS", "PREFIX_LEN", "KeyConflict", "create_key", "day_start", "key_fields", "parse_time", "resolve_key",
    "revoke_key", "top_up", "topup_usd",
]

LIMITS = ("rpm", "rpd", "tpm", "tpd", "ipm")
_ALIASES = {"quota_usd": "granted_usd"}  # the name the create call uses for what the record calls granted
# 7 characters ("sk-" and 4 more): enough to tell keys apart in a list, far too few to guess the rest.
PREFIX_LEN = 7
_TOPUP = Spec("usd", "usd", "USD to add")


class KeyConflict(RelayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    should_retry = False


# -- field checks: relay/admin_schema.py's KEY_FIELDS -------------------------------------------------------


def _invalid(e: FieldError) -> InvalidRequest:
    return InvalidRequest(f"'{e.param}' {e.message}", param=e.param, code=e.code)


def parse_time(param: str, value: Any) -> float:
    """ISO 8601 (a naive time or a bare date is UTC) or unix seconds -> unix seconds."""
    try:
        return unix_time(param, value)
    except FieldError as e:
        raise _invalid(e) from None


def topup_usd(value: Any) -> float:
    try:
        usd = _TOPUP.check(value)
    except FieldError as e:
        raise _invalid(e) from None
    if usd <= 0:
        raise _invalid(FieldError("usd", "must be a positive number of USD."))
    return float(usd)


def key_fields(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Check a create or update body; returns store fields (ADMIN_KEY_FIELDS) -> values."""
    if "quota_usd" in data and "granted_usd" in data:
        raise InvalidRequest("Give 'quota_usd' or 'granted_usd', not both.", param="quota_usd")
    try:
        checked = KEY_FIELDS.check_body(data, creating=creating)
    except FieldError as e:
        raise _invalid(e) from None
    out = {_ALIASES.get(name, name): value for name, value in checked.items()}
    if creating and out.get("expires_at") is not None and out["expires_at"] <= time.time():
        raise _invalid(FieldError("expires_at", "is in the past."))
    return out


async def resolve_key(store: Storage, ref: str) -> KeyRecord:
    """A key by id or displayed prefix; NotFound (saying why) otherwise."""
    record = await store.get_key(ref)
    if record is not None:
        return record
    if sum(k.prefix == ref for k in await store.list_keys()) > 1:
        raise NotFound(f"More than one key has the prefix '{ref}'; use the key's id.", param="id", code="key_ambiguous")
    raise NotFound(f"No key has the id or prefix '{ref}'.", param="id", code="key_not_found")


async def create_key(store: Storage, fields: Mapping[str, Any]) -> tuple[KeyRecord, str]:
    """A new key from checked fields; returns its record and the secret (which is stored only as a hash)."""
    taken = {k.prefix for k in await store.list_keys()}
    secret = new_secret()
    for _ in range(16):  # a prefix already shown for another key would make lookups by prefix ambiguous
        if secret[:PREFIX_LEN] not in taken:
            break
        secret = new_secret()
    record = KeyRecord(
        id="key_" + secrets.token_hex(8), key_hash=hash_key(secret), prefix=secret[:PREFIX_LEN],
        created_at=time.time(), **fields,
    )
    return await store.create_key(record), secret


def day_start(param: str, value: str) -> float:
    """YYYY-MM-DD (midnight UTC), or any ISO 8601 time -> unix seconds."""
    try:
        return iso_time(value.strip())
    except ValueError:
        raise _invalid(FieldError(param, f"must be a date as YYYY-MM-DD (UTC), not {value!r}.")) from None


async def revoke_key(store: Storage, ref: str) -> tuple[KeyRecord, bool]:
    """Revoke a key by id or prefix; returns its record and whether it was revoked already."""
    record = await resolve_key(store, ref)
    if record.status == "revoked":
        return record, True
    updated = await store.update_key(record.id, {"status": "revoked"})
    if updated is None:
        raise NotFound("The key was deleted meanwhile.", param="id", code="key_not_found")
    return updated, False


async def top_up(store: Storage, ref: str, usd: Any) -> KeyRecord:
    """Add USD to a key's granted balance (KeyConflict for a key whose balance is unlimited)."""
    amount = topup_usd(usd)
    record = await resolve_key(store, ref)
    if record.granted_usd is None:
        raise KeyConflict(
            f"Key {record.id} has an unlimited balance, so there is nothing to top up; "
            "set 'granted_usd' with PATCH to give it a quota.", code="key_unlimited",
        )
    updated = await store.top_up(record.id, amount)
    if updated is None or updated.granted_usd is None:
        raise NotFound("The key was deleted meanwhile.", param="id", code="key_not_found")
    return updated
