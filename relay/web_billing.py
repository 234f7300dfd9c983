"""The balance endpoints chat apps read (NextChat's balance widget; one-api / new-api compatible), with or
without /v1, for the key that asks and no other:

    GET /dashboard/billing/subscription      the key's granted USD (hard_limit_usd) and its expiry
    GET /dashboard/billing/usage?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD
                                             what the key spent in [start_date, end_date) UTC, in US cents

Spending comes from the ledger (one range scan of the usage(key_id, ts) index), never from the request
path, and each answer is kept a few seconds per key and window, so a widget polling it costs little.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime

import orjson
from aiohttp import web

from .auth import KeyResolver, authenticate, check_key
from .errors import InvalidRequest, UpstreamUnavailable
from .store_api import Storage
from .types import KeyRecord

__all__ = ["UNLIMITED_USD", "BillingDeps", "add_routes"]

# What an unlimited key reports as its limit: clients want a number, and this one no key will reach.
UNLIMITED_USD = 100_000_000.0
_CACHE_SECONDS = 5.0
_CACHE_MAX = 4096  # (key, window) answers kept; the least recently used goes first
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class BillingDeps:
    def __init__(self, keys: KeyResolver, store: Storage, clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.store = store
        self.clock = clock
        self.cache: OrderedDict[tuple[str, float, float], tuple[float, float]] = OrderedDict()

    async def spent(self, key_id: str, since: float, until: float) -> float:
        """USD the key spent in [since, until), at most _CACHE_SECONDS old."""
        now = self.clock()
        entry = (key_id, since, until)
        hit = self.cache.get(entry)
        if hit is not None and hit[0] > now:
            self.cache.move_to_end(entry)
            return hit[1]
        usd = await self.store.spent_between(key_id, since, until)
        self.cache[entry] = (now + _CACHE_SECONDS, usd)
        self.cache.move_to_end(entry)
        while len(self.cache) > _CACHE_MAX:
            self.cache.popitem(last=False)
        return usd


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, deps: BillingDeps) -> None:
    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/dashboard/billing/subscription", _subscription(deps))
        app.router.add_get(f"{prefix}/dashboard/billing/usage", _usage(deps))


def _key(deps: BillingDeps, request: web.Request) -> KeyRecord:
    key = authenticate(deps.keys, request.headers)
    check_key(key, request.remote, deps.keys.networks_of(key.id))
    return key


def _json(obj: object) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _subscription(deps: BillingDeps) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        key = _key(deps, request)
        limit = UNLIMITED_USD if key.granted_usd is None else round(key.granted_usd, 6)
        return _json({
            "object": "billing_subscription", "has_payment_method": True, "soft_limit_usd": limit,
            "hard_limit_usd": limit, "system_hard_limit_usd": limit,
            "access_until": int(key.expires_at) if key.expires_at is not None else 0,
        })

    return handle


def _usage(deps: BillingDeps) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        key = _key(deps, request)
        since = _day(request.query.get("start_date"), "start_date")
        until = _day(request.query.get("end_date"), "end_date")
        if until <= since:
            raise InvalidRequest("'end_date' must be after 'start_date' (the end date is exclusive).", param="end_date")
        try:
            usd = await deps.spent(key.id, since, until)
        except Exception:  # noqa: BLE001 - the database is down: the figure cannot be read now
            raise UpstreamUnavailable(
                "The relay cannot read the usage ledger right now; retry shortly.", code="store_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        return _json({"object": "list", "total_usage": round(usd * 100, 6)})

    return handle


def _day(value: str | None, name: str) -> float:
    """A YYYY-MM-DD date -> unix time of its start (00:00 UTC)."""
    if not value:
        raise InvalidRequest(f"Missing required parameter: '{name}' (YYYY-MM-DD).", param=name,
                             code="missing_required_parameter")
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date as YYYY-MM-DD.", param=name, code="invalid_date") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
