"""The admin API (/admin/...): client keys, top-ups and usage, and its OpenAPI document.

Every route needs `Authorization: Bearer <admin_token>`; with no admin_token configured each one answers
403 `admin_disabled` (`admin_guard`, also used by relay/web_admin_channels.py). The key rules are
relay/keys.py's, which the CLI calls too.

The admin API writes through a connection of its own, so an operator's change is never part of (or rolled
back with) a ledger batch in flight on the relay's connection. After each write the key cache is refreshed
before the response goes out: the change holds for the very next request to this process, and for other
processes within their poll interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from .admin_openapi import OPENAPI
from .auth import KeyCache
from .balances import Balances
from .config import Config
from .errors import InvalidRequest, NotFound
from .keys import create_key, day_start, key_fields, resolve_key, revoke_key, top_up
from .storage import Storage, make_store
from .types import KeyRecord
from .web_admin_guard import Handler, admin_guard

__all__ = ["OPENAPI", "AdminDeps", "Handler", "add_routes", "admin_guard", "json_answer", "read_body"]

USAGE_GROUPS = ("key", "model", "day")


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
        updated, _ = await revoke_key(deps.store, request.match_info["id"])
        await deps.changed(updated)
        return json_answer(deps.view(updated))

    async def topup(request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        for name in body:
            if name != "usd":
                raise InvalidRequest(f"Unknown field '{name}'. Allowed fields: usd.", param=name, code="unknown_parameter")
        updated = await top_up(deps.store, request.match_info["id"], body.get("usd"))
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
            raise InvalidRequest(
                f"'by' must be a comma-separated list of distinct fields among {', '.join(USAGE_GROUPS)}.",
                param="by", code="invalid_value",
            )
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


