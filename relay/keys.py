"""The key service: the checks and operations on client keys that the CLI (`relay keys ...`) and the admin
API (/admin/keys) both call, so the rules are written once: field checks (`key_fields`, `parse_time`),
creation (the secret is returned once and stored only as a hash), lookup by id or prefix, revocation and
top-ups. Errors are the relay's own (OpenAI's shape on the API; one line naming the flag on the CLI).
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

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
_CREATE_FIELDS = ("name", "quota_usd", "granted_usd", *LIMITS, "models", "expires_at", "ip_allow", "group")
_PATCH_FIELDS = (*_CREATE_FIELDS, "status")
_ALIASES = {"quota_usd": "granted_usd"}  # the name the create call uses for what the record calls granted
_MAX_USD = 1e12
_MAX_LIMIT = 10**15
# 7 characters ("sk-" and 4 more): enough to tell keys apart in a list, far too few to guess the rest.
PREFIX_LEN = 7


class KeyConflict(RelayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    should_retry = False


# -- field checks ---------------------------------------------------------------------------------------


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {message}", param=param, code="invalid_value")


def parse_time(param: str, value: Any) -> float:
    """ISO 8601 (a naive time or a bare date is UTC) or unix seconds -> unix seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise _bad(param, "must be a positive unix time or an ISO 8601 date.")
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return float(text) if text.replace(".", "", 1).isdigit() else _iso(text)
        except ValueError:
            pass
    raise _bad(param, f"must be an ISO 8601 date or time (e.g. 2030-01-31 or 2030-01-31T12:00:00Z), not {value!r}.")


def _iso(text: str) -> float:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _usd(param: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(param, "must be a number of USD (or null for no limit).")
    if not 0 <= value <= _MAX_USD:
        raise _bad(param, f"must be between 0 and {_MAX_USD:.0f}.")
    return float(value)


def topup_usd(value: Any) -> float:
    usd = _usd("usd", value)
    if usd is None or usd <= 0:
        raise _bad("usd", "must be a positive number of USD.")
    return usd


def _limit(param: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_LIMIT:
        raise _bad(param, "must be a positive integer (or null for no limit).")
    return value


def _str_list(param: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _bad(param, "must be a list of non-empty strings.")
    return list(dict.fromkeys(v.strip() for v in value))


def _cidrs(param: str, value: Any) -> tuple[str, ...]:
    out = []
    for v in _str_list(param, value):
        try:
            out.append(str(ipaddress.ip_network(v, strict=False)))
        except ValueError:
            raise _bad(param, f"holds {v!r}, which is not an IP address or CIDR block (e.g. 10.0.0.0/8).") from None
    return tuple(dict.fromkeys(out))


def _text(param: str, value: Any, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > max_len or not value.isprintable():
        raise _bad(param, f"must be a non-empty string of at most {max_len} printable characters.")
    return value.strip()


def key_fields(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Check a create or update body; returns store fields (ADMIN_KEY_FIELDS) -> values."""
    allowed = _CREATE_FIELDS if creating else _PATCH_FIELDS
    for name in data:
        if name not in allowed:
            raise InvalidRequest(
                f"Unknown field '{name}'. Allowed fields: {', '.join(allowed)}.", param=name, code="unknown_parameter"
            )
    if "quota_usd" in data and "granted_usd" in data:
        raise InvalidRequest("Give 'quota_usd' or 'granted_usd', not both.", param="quota_usd")
    out: dict[str, Any] = {}
    for name, value in data.items():
        field = _ALIASES.get(name, name)
        if field == "name":
            out[field] = _text(name, value, 200)
        elif field == "group":
            out[field] = _text(name, value, 64)
        elif field == "granted_usd":
            out[field] = _usd(name, value)
        elif field in LIMITS:
            out[field] = _limit(name, value)
        elif field == "models":
            out[field] = tuple(_str_list(name, value))
        elif field == "ip_allow":
            out[field] = _cidrs(name, value)
        elif field == "expires_at":
            out[field] = None if value is None else parse_time(name, value)
            if creating and out[field] is not None and out[field] <= time.time():
                raise _bad(name, "is in the past.")
        elif field == "status":
            if value not in ("active", "revoked"):
                raise _bad(name, "must be 'active' or 'revoked'.")
            out[field] = value
    if creating and "name" not in out:
        raise InvalidRequest("'name' is required.", param="name", code="missing_required_parameter")
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
        return _iso(value.strip())
    except ValueError:
        raise _bad(param, f"must be a date as YYYY-MM-DD (UTC), not {value!r}.") from None


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
