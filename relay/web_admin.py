"""The admin API (/admin/...): client keys, top-ups and usage, and its OpenAPI document.

Every route needs `Authorization: Bearer <admin_token>`; with no admin_token configured each one answers
403 `admin_disabled`. The field checks live here once and serve the CLI too (`key_fields`, `parse_time`).

The admin API writes through a connection of its own, so an operator's change is never part of (or rolled
back with) a ledger batch in flight on the relay's connection. After each write the key cache is refreshed
before the response goes out: the change holds for the very next request to this process, and for other
processes within their poll interval.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web

from .auth import KeyCache, new_secret
from .balances import Balances
from .config import Config, hash_key
from .admin_openapi import OPENAPI
from .errors import InvalidRequest, NotFound, PermissionDenied, RelayError, Unauthorized
from .storage import Storage, make_store
from .types import KeyRecord

__all__ = [
    "LIMITS", "AdminDeps", "KeyConflict", "OPENAPI", "add_routes", "create_key", "day_start", "key_fields", "parse_time",
    "resolve_key", "topup_usd",
]

LIMITS = ("rpm", "rpd", "tpm", "tpd", "ipm")
USAGE_GROUPS = ("key", "model", "day")
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


# -- field checks (shared with the CLI) -------------------------------------------------------------------


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


# -- routes -----------------------------------------------------------------------------------------------


class AdminDeps:
    """What the admin routes need: config, the key cache and balances of this process, and a store."""

    def __init__(self, cfg: Config, store: Storage, keys: KeyCache, balances: Balances) -> None:
        self.cfg = cfg
        self.keys = keys
        self.balances = balances
        # Its own connection (see the module docstring); an in-memory database cannot be shared that way.
        self.own_store = cfg.admin_token is not None and cfg.database != ":memory:"
        self.store = make_store(cfg.database) if self.own_store else store

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        if self.own_store:
            await self.store.open()
        yield
        if self.own_store:
            await self.store.close()

    def view(self, k: KeyRecord) -> dict[str, Any]:
        """The public fields, with spent as this process knows it (its charges not yet written included)."""
        out = k.public()
        spent = k.spent_usd + self.balances.unflushed(k.id)
        out["spent_usd"] = round(spent, 9)
        out["remaining_usd"] = None if k.granted_usd is None else round(k.granted_usd - spent, 9)
        return out

    async def changed(self, k: KeyRecord) -> None:
        """Refresh the key cache until it holds this change (a ledger batch in flight may hide it briefly)."""
        deadline = time.monotonic() + 1.0
        while True:
            await self.keys.refresh()
            cached = self.keys.get(k.id)
            if (cached is not None and cached.rev >= k.rev) or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def read_body(request: web.Request, required: bool = True) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise InvalidRequest("The request body is empty; a JSON object is required.", code="invalid_json")
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def admin_guard(admin_token: str | None) -> Callable[[Handler], Handler]:
    """Wraps an admin handler: it runs only for `Authorization: Bearer <admin_token>` (every /admin route)."""
    token = admin_token.encode() if admin_token else None

    def guarded(handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if token is None:
                raise PermissionDenied(
                    "The admin API is disabled: set admin_token in the relay's config to enable it.",
                    code="admin_disabled",
                )
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            try:
                presented = given.strip().encode()
            except UnicodeEncodeError:  # undecodable header bytes: cannot be the token
                presented = b""
            if scheme.lower() != "bearer" or not presented or not hmac.compare_digest(presented, token):
                raise Unauthorized(
                    "The admin API needs 'Authorization: Bearer <admin_token>'; the token given is missing or wrong.",
                    code="invalid_admin_token",
                )
            return await handler(request)

        return handle

    return guarded


def add_routes(app: web.Application, deps: AdminDeps) -> None:
    guarded = admin_guard(deps.cfg.admin_token)

    async def create(request: web.Request) -> web.StreamResponse:
        record, secret = await create_key(deps.store, key_fields(await read_body(request), creating=True))
        await deps.changed(record)
        return json_answer({**deps.view(record), "key": secret}, status=201)

    async def list_(request: web.Request) -> web.StreamResponse:
        return json_answer({"object": "list", "data": [deps.view(k) for k in await deps.store.list_keys()]})

    async def get(request: web.Request) -> web.StreamResponse:
        return json_answer(deps.view(await resolve_key(deps.store, request.match_info["id"])))

    async def patch(request: web.Request) -> web.StreamResponse:
        fields = key_fields(await read_body(request), creating=False)
        record = await resolve_key(deps.store, request.match_info["id"])
        updated = await deps.store.update_key(record.id, fields)
        if updated is None:
            raise NotFound("The key was deleted meanwhile.", param="id", code="key_not_found")
        await deps.changed(updated)
        return json_answer(deps.view(updated))

    async def revoke(request: web.Request) -> web.StreamResponse:
        await read_body(request, required=False)
        record = await resolve_key(deps.store, request.match_info["id"])
        updated = await deps.store.update_key(record.id, {"status": "revoked"})
        if updated is None:
            raise NotFound("The key was deleted meanwhile.", param="id", code="key_not_found")
        await deps.changed(updated)
        return json_answer(deps.view(updated))

    async def topup(request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        for name in body:
            if name != "usd":
                raise InvalidRequest(f"Unknown field '{name}'. Allowed fields: usd.", param=name, code="unknown_parameter")
        usd = topup_usd(body.get("usd"))
        record = await resolve_key(deps.store, request.match_info["id"])
        if record.granted_usd is None:
            raise KeyConflict(
                f"Key {record.id} has an unlimited balance, so there is nothing to top up; "
                "set 'granted_usd' with PATCH to give it a quota.", code="key_unlimited",
            )
        updated = await deps.store.top_up(record.id, usd)
        if updated is None:
            raise NotFound("The key was deleted meanwhile.", param="id", code="key_not_found")
        await deps.changed(updated)
        return json_answer(deps.view(updated))

    async def usage(request: web.Request) -> web.StreamResponse:
        q = request.query
        for name in q:
            if name not in ("key", "since", "by"):
                raise InvalidRequest(f"Unknown query parameter '{name}'. Allowed: key, since, by.", param=name, code="unknown_parameter")
        key_id = (await resolve_key(deps.store, q["key"])).id if q.get("key") else None
        since = day_start("since", q["since"]) if "since" in q else None
        by = [b.strip() for b in q.get("by", ",".join(USAGE_GROUPS)).split(",") if b.strip()]
        if any(b not in USAGE_GROUPS for b in by) or len(set(by)) != len(by):
            raise _bad("by", f"must be a comma-separated list of distinct fields among {', '.join(USAGE_GROUPS)}.")
        rows = await deps.store.usage_summary(key_id, since, by)
        for r in rows:
            r["total_tokens"] = r["prompt_tokens"] + r["completion_tokens"]
        return json_answer({"object": "list", "by": by, "data": rows})

    async def openapi(request: web.Request) -> web.StreamResponse:
        return json_answer(OPENAPI)

    r = app.router
    r.add_post("/admin/keys", guarded(create))
    r.add_get("/admin/keys", guarded(list_), allow_head=False)
    r.add_get("/admin/keys/{id}", guarded(get), allow_head=False)
    r.add_patch("/admin/keys/{id}", guarded(patch))
    r.add_delete("/admin/keys/{id}", guarded(revoke))
    r.add_post("/admin/keys/{id}/revoke", guarded(revoke))
    r.add_post("/admin/keys/{id}/topup", guarded(topup))
    r.add_get("/admin/usage", guarded(usage), allow_head=False)
    r.add_get("/admin/openapi.json", guarded(openapi), allow_head=False)
    app.cleanup_ctx.append(deps.lifecycle)


