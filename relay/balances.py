"""Per-key balances that no number of processes can overspend, with no store round trip per request.

Each process holds a *lease* on each key it serves: a slice of the key's balance that the store has set
aside for it (granted - spent - every live lease is what no process holds). Requests reserve their worst
case from the slice and settle the real cost into it, all in memory; the ledger's writes move settled
costs from the lease into spent in one transaction (so a lease never pays twice). One background task, the
keeper, asks the store for more when a slice runs low (before it runs out, so steady traffic never waits),
renews the leases every `ttl / 3` seconds, and gives back those of keys left idle. A request that finds
its slice short waits for the keeper's next round trip; only if the store then has nothing left for it is
it refused with `insufficient_quota`.

Slices shrink as the balance runs low: a lease takes `fraction` of what is free (at least what its waiting
requests need), so the last dollars are spread in ever smaller slices and what is stranded in other
processes' slices is at most about one request's reservation each.

A process that dies keeps its lease until it expires (`ttl`); its holder name is stable (host, port and
worker slot), so the same process restarted takes its own lease back at once. A process that cannot renew
stops spending its slice `ttl * 0.2` before the store would hand it to someone else, and answers 503
`balance_unavailable` until the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from .config import PriceConfig
from .errors import RelayError, UpstreamUnavailable
from .tasks import stop
from .types import KeyRecord

__all__ = ["BalanceUnavailable", "Balances", "InsufficientQuota", "LeaseStore", "Reservation"]

log = logging.getLogger("relay.balances")

# Balances are sums of float prices: a key whose balance covers a request exactly may show a few ulps less.
# Amounts within this much of each other count as equal (a key can go below zero by at most this, once).
_EPSILON = 1e-9
# A slice is refilled in the background once less than this share of its last grant is left.
_LOW_WATER = 0.5
# A slice stops being spent this share of the lease's ttl before the store's expiry.
_MARGIN = 0.2


def _fits(available: float, amount: float) -> bool:
    """Something is left (even a free request needs that) and it covers the amount, within float error."""
    return available > _EPSILON and available + _EPSILON >= amount


class InsufficientQuota(RelayError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    should_retry = False


class BalanceUnavailable(UpstreamUnavailable):
    """The key's balance cannot be checked (the store is unreachable and this process holds no slice)."""

    code = "balance_unavailable"


class LeaseStore(Protocol):
    async def lease(
        self, key_id: str, holder: str, need: float, fraction: float, ttl: float, at_least: float | None = None,
    ) -> tuple[float, float] | None: ...

    async def renew_leases(self, holder: str, ttl: float) -> dict[str, float]: ...

    async def release_leases(self, holder: str, key_ids: Iterable[str] | None = None) -> None: ...


class Reservation:
    __slots__ = ("amount", "key_id", "limited", "multiplier", "price")

    def __init__(self, key_id: str, amount: float, price: PriceConfig, multiplier: float, limited: bool) -> None:
        self.key_id = key_id
        self.amount = amount
        self.price = price
        self.multiplier = multiplier
        self.limited = limited


class _Slice:
    """This process's share of one key's balance."""

    __slots__ = (
        "free",
        "granted",
        "grants",
        "lease",
        "least",
        "reserved",
        "unflushed",
        "unlimited",
        "used",
        "valid_until",
        "waiters",
        "wanted",
    )

    def __init__(self) -> None:
        self.lease = 0.0  # what the store holds for this process (lowered as the ledger writes its charges)
        self.unflushed = 0.0  # charged here, not yet written to the store
        self.reserved = 0.0  # in flight
        self.valid_until = 0.0  # monotonic: spend nothing after this unless renewed
        self.granted = 0.0  # what was available after the last grant: the low-water mark is half of it
        self.grants = 0  # how many times the store added to the lease
        self.unlimited = False  # the store says the key has no balance limit (changed since it was cached)
        self.free = 0.0  # what the store had left for no one after the last grant
        self.wanted = 0.0  # shortfall of the requests waiting (0: only a background refill is asked)
        self.least = math.inf  # the smallest shortfall among them
        self.waiters: list[asyncio.Future[None]] = []
        self.used = 0.0  # monotonic time of the last reservation

    @property
    def available(self) -> float:
        return self.lease - self.unflushed - self.reserved


class Balances:
    """Reserve and settle against leased slices; `start()` runs the keeper, `close()` gives the leases back.

    The request path calls `try_reserve` (no await), then `reserve` only when the slice is short.
    """

    def __init__(
        self, store: LeaseStore, holder: str, ttl: float = 60.0, fraction: float = 0.25,
        clock: Callable[[], float] = time.monotonic, on_store_error: Callable[[], None] | None = None,
    ) -> None:
        self._on_store_error = on_store_error
        self._store = store
        self.holder = holder
        self.ttl = ttl
        self.fraction = fraction
        self._clock = clock
        self._slices: dict[str, _Slice] = {}
        self._unlimited_unflushed: dict[str, float] = {}
        self._asked: set[str] = set()  # keys the keeper should lease for at its next round
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.store_ok = True
        self._renewed = 0.0

    # -- the request path ---------------------------------------------------------------------------------

    def try_reserve(self, key: KeyRecord, amount: float, price: PriceConfig, multiplier: float) -> Reservation | None:
        """A reservation from the slice in hand, or None: await `reserve` (the slice must grow first)."""
        if key.granted_usd is None:
            return Reservation(key.id, amount, price, multiplier, False)
        s = self._slices.get(key.id)
        if s is None or s.valid_until <= self._clock() or not _fits(s.available, amount):
            return None
        return self._take(key.id, s, amount, price, multiplier)

    async def reserve(self, key: KeyRecord, amount: float, price: PriceConfig, multiplier: float) -> Reservation:
        """Wait for the keeper to grow the slice (one store round trip), then reserve or refuse."""
        r = self.try_reserve(key, amount, price, multiplier)
        if r is not None:
            return r
        s = self._slices.get(key.id)
        if s is None:
            s = self._slices[key.id] = _Slice()
        for _ in range(3):  # another waiter may take the grant first: ask again, a few times at most
            valid = s.valid_until > self._clock()
            short = max(amount - (s.available if valid else 0.0), _EPSILON)
            s.wanted += short
            s.least = min(s.least, short)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            s.waiters.append(fut)
            self._ask(key.id)
            grants = s.grants
            await fut
            if s.unlimited:
                return Reservation(key.id, amount, price, multiplier, False)
            if s.valid_until <= self._clock():
                raise BalanceUnavailable(
                    "The relay cannot check this key's balance right now; retry shortly.", headers={"Retry-After": "1"}
                )
            if _fits(s.available, amount):
                return self._take(key.id, s, amount, price, multiplier)
            if s.grants == grants:
                break  # the store had nothing more for it
        left = max(s.available, 0.0) + s.free
        if left <= _EPSILON:
            raise InsufficientQuota("This key's balance is exhausted; top it up to continue.")
        raise InsufficientQuota(
            f"This key's remaining balance (${left:.6f}) does not cover this request's maximum cost "
            f"(${amount:.6f}); lower max_tokens or top the key up."
        )

    def _take(self, key_id: str, s: _Slice, amount: float, price: PriceConfig, multiplier: float) -> Reservation:
        s.reserved += amount
        s.used = self._clock()
        if s.available < s.granted * (1 - _LOW_WATER) and key_id not in self._asked:
            self._ask(key_id)  # refill before it runs out
        return Reservation(key_id, amount, price, multiplier, True)

    def settle(self, r: Reservation, actual: float) -> float:
        """Release the reservation and charge the actual cost, capped at what was reserved; returns it."""
        charged = min(max(actual, 0.0), r.amount)
        if not r.limited:
            if charged:
                self._unlimited_unflushed[r.key_id] = self._unlimited_unflushed.get(r.key_id, 0.0) + charged
            return charged
        s = self._slices[r.key_id]
        s.reserved = max(s.reserved - r.amount, 0.0)
        s.unflushed += charged
        return charged

    # -- what the ledger and the admin API tell and ask -------------------------------------------------

    def written(self, costs: Mapping[str, float]) -> None:
        """The ledger wrote these charges (key id -> USD): they left the lease for spent in the store."""
        for key_id, usd in costs.items():
            s = self._slices.get(key_id)
            if s is not None:
                paid = min(usd, s.unflushed)
                s.unflushed -= paid
                s.lease = max(s.lease - paid, 0.0)
                usd -= paid
            if usd > _EPSILON:  # charged while the key had no balance limit
                left = self._unlimited_unflushed.get(key_id, 0.0) - usd
                if left > _EPSILON:
                    self._unlimited_unflushed[key_id] = left
                else:
                    self._unlimited_unflushed.pop(key_id, None)

    def unflushed(self, key_id: str) -> float:
        """Charged by this process and not yet in the store's spent."""
        s = self._slices.get(key_id)
        return (s.unflushed if s is not None else 0.0) + self._unlimited_unflushed.get(key_id, 0.0)

    # -- the keeper -------------------------------------------------------------------------------------

    def _ask(self, key_id: str) -> None:
        self._asked.add(key_id)
        self._wake.set()

    def start(self) -> None:
        self._renewed = self._clock()
        self._task = asyncio.create_task(self._run(), name="balance-keeper")

    async def close(self) -> None:
        """Stop the keeper and give back every lease whose charges are all written (call after the ledger's close)."""
        await stop(self._task)
        self._task = None
        done = [k for k, s in self._slices.items() if s.unflushed <= _EPSILON and s.reserved <= _EPSILON]
        if done:
            try:
                await self._store.release_leases(self.holder, done)
            except Exception as e:  # noqa: BLE001 - they expire on their own
                log.warning("balance leases not given back (%s); they expire in %.0fs", type(e).__name__, self.ttl)

    async def _run(self) -> None:
        while True:
            # the store failing: try again every second (a renewal tells when it is back), else every ttl / 3
            interval = self.ttl / 3 if self.store_ok else min(1.0, self.ttl / 3)
            wait = max(0.0, self._renewed + interval - self._clock())
            if not self._asked:
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
            self._wake.clear()
            asked, self._asked = self._asked, set()
            for key_id in asked:
                await self._grow(key_id)
            if self._clock() >= self._renewed + interval:
                await self._renew()

    async def _grow(self, key_id: str) -> None:
        s = self._slices.get(key_id)
        if s is None:
            return
        wanted, least, waiters = s.wanted, s.least, s.waiters
        s.wanted, s.least, s.waiters = 0.0, math.inf, []
        started = self._clock()
        try:
            # A background refill asks for a last grant's worth; waiting requests for what they lack.
            got = await self._store.lease(
                key_id, self.holder, wanted or s.granted, self.fraction, self.ttl,
                at_least=least if waiters else 0.0,
            )
        except Exception as e:  # noqa: BLE001 - the store is down: keep spending the slice while it is valid
            self._store_failed(e)
        else:
            self._store_back()
            s.unlimited = got is None  # the key has no balance limit any more
            if got is None:
                s.lease = s.granted = s.valid_until = 0.0
            else:
                lease, s.free = got
                if lease > s.lease + _EPSILON:
                    s.grants += 1
                s.lease = lease
                s.granted = lease - s.unflushed
                s.valid_until = started + self.ttl * (1 - _MARGIN)
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _renew(self) -> None:
        started = self._clock()
        self._renewed = started
        idle = [
            k for k, s in self._slices.items()
            if started - s.used > self.ttl and s.reserved <= _EPSILON and s.unflushed <= _EPSILON and not s.waiters
        ]
        try:
            if idle:
                await self._store.release_leases(self.holder, idle)
                for k in idle:
                    del self._slices[k]
            live = await self._store.renew_leases(self.holder, self.ttl)
        except Exception as e:  # noqa: BLE001
            self._store_failed(e)
            return
        self._store_back()
        for key_id, s in self._slices.items():
            if key_id in live:
                s.valid_until = started + self.ttl * (1 - _MARGIN)
            elif s.lease > _EPSILON:
                # expired in the store (it was unreachable too long): what it held may be another's now
                s.lease = 0.0
                s.valid_until = 0.0

    def _store_failed(self, e: Exception) -> None:
        if self._on_store_error is not None:
            self._on_store_error()
        if self.store_ok:
            log.error("balance leases: the store failed (%s); spending the slices in hand for up to %.0fs",
                      type(e).__name__, self.ttl * (1 - _MARGIN))
        self.store_ok = False

    def _store_back(self) -> None:
        if not self.store_ok:
            log.warning("balance leases: the store answers again")
        self.store_ok = True
