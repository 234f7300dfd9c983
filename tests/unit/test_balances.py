"""Balances reserved and settled from leased slices, against a real SQLite store in a temp folder.

Each test drives the keeper (the one background task) for real: a request whose slice is short waits for
one store round trip. Several Balances on one database file stand for several relay processes.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.balances import Balances, BalanceUnavailable, InsufficientQuota
from relay.config import PriceConfig
from relay.errors import error_response
from relay.store import Store
from relay.types import KeyRecord, UsageRecord

DEMO = PriceConfig(input=1.0, output=2.0)

MakeBalances = Callable[..., Awaitable[Balances]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(str(tmp_path / "b.db"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[MakeBalances]:
    """Balances of one "process": its own store connection to the shared file, its keeper running."""
    made: list[tuple[Balances, Store]] = []

    async def factory(holder: str = "p1", **kw: Any) -> Balances:
        s = Store(str(tmp_path / "b.db"))
        await s.open()
        b = Balances(s, holder, **kw)
        b.start()
        made.append((b, s))
        return b

    yield factory
    for b, s in made:
        await b.close()
        await s.close()


async def add_key(store: Store, granted: float | None, key_id: str = "k1") -> KeyRecord:
    return await store.create_key(
        KeyRecord(id=key_id, name=key_id, key_hash="h-" + key_id, prefix=key_id, granted_usd=granted, created_at=1.0)
    )


def row(key_id: str, cost: float) -> UsageRecord:
    return UsageRecord(
        request_id="req_" + uuid.uuid4().hex, ts=1.0, key_id=key_id, model="demo", endpoint="chat/completions",
        channel="c", account=0, status=200, end_reason="ok", prompt_tokens=1, completion_tokens=1,
        usage_source="upstream", latency_ms=1.0, ttft_ms=None, stream=False, attempts=1, cost_usd=cost,
    )


async def write(store: Store, b: Balances, key_id: str, cost: float) -> None:
    """What the ledger does with a settled charge: write it with the holder, then tell the balances."""
    await store.write_usage([row(key_id, cost)], b.holder)
    b.written({key_id: cost})


async def reserve(b: Balances, k: KeyRecord, amount: float) -> Any:
    r = b.try_reserve(k, amount, DEMO, 1.0)
    return r if r is not None else await b.reserve(k, amount, DEMO, 1.0)


async def test_reserve_refuses_when_the_worst_case_does_not_fit(store: Store, make: MakeBalances) -> None:
    k = await add_key(store, 1.0)
    b = await make()
    r1 = await reserve(b, k, 0.625)
    with pytest.raises(InsufficientQuota) as e:
        await reserve(b, k, 0.5)  # 0.375 left
    assert "does not cover" in e.value.message
    r2 = await reserve(b, k, 0.375)  # fits exactly
    with pytest.raises(InsufficientQuota) as e:
        await reserve(b, k, 0.0)
    assert "exhausted" in e.value.message
    assert b.settle(r1, 0.125) == 0.125
    assert b.settle(r2, 0.25) == 0.25
    # settled costs not yet written still count; the released rest of the reservations is spendable again
    assert b.unflushed("k1") == 0.375
    await reserve(b, k, 0.625)


async def test_settle_never_charges_more_than_reserved_and_nothing_for_a_failure(store: Store, make: MakeBalances) -> None:
    k = await add_key(store, 10.0)
    b = await make()
    assert b.settle(await reserve(b, k, 2.0), 7.0) == 2.0
    assert b.settle(await reserve(b, k, 1.0), 0.0) == 0.0
    assert b.settle(await reserve(b, k, 1.0), -3.0) == 0.0  # a negative cost is no refund
    assert b.unflushed("k1") == 2.0


async def test_insufficient_quota_renders_as_openai_error_without_retry(store: Store, make: MakeBalances) -> None:
    k = await add_key(store, 0.001)
    b = await make()
    with pytest.raises(InsufficientQuota) as e:
        await reserve(b, k, 0.5)
    resp = error_response(e.value)
    assert resp.status == 429
    assert resp.headers["x-should-retry"] == "false"
    assert resp.body is not None
    body = orjson.loads(resp.body)  # type: ignore[arg-type]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == body["error"]["type"] == "insufficient_quota"


async def test_unlimited_keys_are_never_refused_and_take_no_lease(store: Store, make: MakeBalances) -> None:
    k = await add_key(store, None)
    b = await make()
    rs = [b.try_reserve(k, 1e6, DEMO, 1.0) for _ in range(100)]
    assert all(r is not None for r in rs)
    for r in rs:
        b.settle(r, 1e6)
    assert b.unflushed("k1") == pytest.approx(1e8)
    assert await store.leased("k1") == 0.0


async def test_spent_in_the_store_counts_and_keys_are_separate(store: Store, make: MakeBalances) -> None:
    a = await add_key(store, 1.0, "a")
    other = await add_key(store, 1.0, "b")
    await store.write_usage([row("a", 0.75)])  # spent before this process started
    b = await make()
    with pytest.raises(InsufficientQuota):
        await reserve(b, a, 0.5)
    b.settle(await reserve(b, other, 1.0), 1.0)  # b's balance is untouched by a's spending
    b.settle(await reserve(b, a, 0.25), 0.25)


async def test_a_written_charge_moves_from_the_lease_to_spent(store: Store, make: MakeBalances) -> None:
    k = await add_key(store, 10.0)
    b = await make(fraction=0.5)
    b.settle(await reserve(b, k, 1.0), 1.0)
    held = await store.leased("k1")
    assert 1.0 <= held <= 10.0
    await write(store, b, "k1", 1.0)
    got = await store.get_key("k1")
    assert got is not None and got.spent_usd == 1.0
    assert await store.leased("k1") == pytest.approx(held - 1.0)
    assert b.unflushed("k1") == 0.0


async def test_steady_traffic_refills_the_slice_in_the_background(store: Store, make: MakeBalances) -> None:
    k = await add_key(store, 1000.0)
    b = await make(fraction=0.1)  # first slice: $100
    b.settle(await reserve(b, k, 1.0), 1.0)
    waited = 0
    for _ in range(300):  # $300 of requests, three slices' worth
        r = b.try_reserve(k, 1.0, DEMO, 1.0)
        if r is None:
            waited += 1
            r = await b.reserve(k, 1.0, DEMO, 1.0)
        b.settle(r, 1.0)
        await write(store, b, "k1", 1.0)
        await asyncio.sleep(0)  # the keeper gets its turns, as it does between real requests
    assert waited <= 3, f"{waited} of 300 requests waited for the store"


@pytest.mark.parametrize(("granted", "price", "n"), [(0.3, 0.1, 3), (1.0, 0.1, 10), (0.07, 0.01, 7), (2.2, 0.11, 20)])
async def test_a_balance_covering_exactly_n_requests_serves_all_n(
    store: Store, make: MakeBalances, granted: float, price: float, n: int,
) -> None:
    """Decimal prices do not add up exactly in floats; the last request that fits must still be served."""
    k = await add_key(store, granted)
    b = await make()
    reservations = await asyncio.gather(*(reserve(b, k, price) for _ in range(n)))
    with pytest.raises(InsufficientQuota) as e:
        await reserve(b, k, price)
    assert "exhausted" in e.value.message
    for r in reservations:
        b.settle(r, price)
    assert b.unflushed("k1") == pytest.approx(granted, abs=1e-9)


async def test_many_processes_never_hand_out_more_than_the_balance(store: Store, make: MakeBalances) -> None:
    """Four holders on one file, random reserve/settle/write: the charges never pass the grant, and the
    slices strand at most about one reservation each."""
    k = await add_key(store, 50.0)
    procs = [await make(f"p{i}", fraction=0.3) for i in range(4)]
    rng = random.Random(5)
    charged = 0.0

    async def one(b: Balances) -> bool:
        nonlocal charged
        try:
            r = await reserve(b, k, 1.0)
        except InsufficientQuota:
            return False
        await asyncio.sleep(rng.random() * 0.002)
        charged += b.settle(r, 1.0)
        await write(store, b, "k1", 1.0)
        return True

    results = await asyncio.gather(*(one(procs[i % 4]) for i in range(200)))
    got = await store.get_key("k1")
    assert got is not None
    assert charged == got.spent_usd == sum(results) <= 50.0
    assert sum(results) >= 50 - 4, sum(results)


async def test_a_dead_holders_lease_returns_after_its_expiry_and_a_restart_takes_its_own(
    store: Store, make: MakeBalances,
) -> None:
    k = await add_key(store, 10.0)
    dead = await store.lease("k1", "gone", 10.0, 1.0, ttl=1.0)  # a process that leased everything and died
    assert dead == (10.0, 0.0)
    other = await make("p2", ttl=5.0)
    with pytest.raises(InsufficientQuota):
        await reserve(other, k, 1.0)
    await asyncio.sleep(1.1)
    assert await store.leased("k1") == 0.0
    await reserve(other, k, 1.0)
    # the same holder name (the same process restarted) takes its live lease back at once
    got = await store.lease("k1", "p3", 2.0, 0.0, ttl=30.0)
    assert got is not None and got[0] == 2.0
    again = await make("p3")
    await reserve(again, k, 2.0)


class _Down:
    """A store that has gone away: every call fails."""

    async def lease(self, *a: Any, **kw: Any) -> float | None:
        raise OSError("connection refused")

    async def renew_leases(self, *a: Any) -> dict[str, float]:
        raise OSError("connection refused")

    async def release_leases(self, *a: Any) -> None:
        raise OSError("connection refused")


async def test_without_a_store_and_without_a_slice_the_answer_is_503_not_insufficient_quota(store: Store) -> None:
    k = await add_key(store, 10.0)
    b = Balances(_Down(), "p1")  # type: ignore[arg-type]
    b.start()
    try:
        with pytest.raises(BalanceUnavailable) as e:
            await reserve(b, k, 1.0)
        assert e.value.status == 503
        assert e.value.headers.get("Retry-After") == "1"
        assert not b.store_ok
    finally:
        await b.close()
