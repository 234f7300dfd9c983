"""The store contract, run on both stores (a real SQLite file and a real PostgreSQL database): keys, revs as
the key cache polls them, the ledger's batches, spent against the ledger, the usage summary, availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from relay.storage import Storage, make_store
from relay.store_api import BucketCount
from relay.types import KeyRecord, UsageRecord
from tests.pg import pg_database

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

OpenStore = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens another store on the test's one database (as another process would); all closed afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            database = str(tmp_path / "relay.db")
        else:
            database = await stack.enter_async_context(pg_database())
        opened: list[Storage] = []

        async def make() -> Storage:
            store = make_store(database)
            await store.open()
            opened.append(store)
            return store

        yield make
        for s in opened:
            await s.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Storage:
    return await open_store()


def key(n: int, **kw: object) -> KeyRecord:
    base = KeyRecord(id=f"key_{n}", name=f"k{n}", key_hash=f"{n:064x}", prefix=f"sk-{n:04d}", created_at=T0 + n)
    return replace(base, **kw)  # type: ignore[arg-type]


def row(i: int, **kw: object) -> UsageRecord:
    base = UsageRecord(
        request_id=f"req_{i}", ts=T0 + i, key_id="key_1", model="demo", endpoint="chat/completions",
        channel="fake", account=i % 3, status=200, end_reason="ok", prompt_tokens=5, completion_tokens=7,
        usage_source="upstream", latency_ms=1.5, ttft_ms=None, stream=False, attempts=1, cost_usd=0.25,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def test_keys_create_get_list_update_top_up(store: Storage) -> None:
    created = await store.create_key(key(1, granted_usd=10.0, models=("gpt-4o*", "demo"), rpm=60, tpd=10**15,
                                         ip_allow=("10.0.0.0/8",), group="team", expires_at=T0 + DAY))
    assert created.spent_usd == 0 and created.rev > 0
    assert created.models == ("gpt-4o*", "demo") and created.ip_allow == ("10.0.0.0/8",) and created.tpd == 10**15
    await store.create_key(key(2))
    assert await store.get_key("key_1") == created
    assert await store.get_key("sk-0001") == created  # by displayed prefix
    assert await store.get_key("sk-none") is None
    await store.create_key(key(3, prefix="sk-0002"))
    assert await store.get_key("sk-0002") is None  # a prefix two keys share names neither
    assert [k.id for k in await store.list_keys()] == ["key_1", "key_2", "key_3"]

    updated = await store.update_key("key_1", {"name": "renamed", "models": ["x"], "group": None, "rpm": None})
    assert updated is not None and (updated.name, updated.models, updated.group, updated.rpm) == ("renamed", ("x",), "default", None)
    assert updated.rev > created.rev
    with pytest.raises(ValueError):
        await store.update_key("key_1", {"spent_usd": 0})
    topped = await store.top_up("key_1", 2.5)
    assert topped is not None and topped.granted_usd == 12.5 and topped.rev > updated.rev
    unlimited = await store.top_up("key_2", 5)
    assert unlimited is not None and unlimited.granted_usd is None  # nothing to top up
    assert await store.update_key("key_none", {"name": "x"}) is None


async def test_concurrent_top_ups_all_count(open_store: OpenStore) -> None:
    stores = [await open_store() for _ in range(3)]
    await stores[0].create_key(key(1, granted_usd=0.0))
    await asyncio.gather(*(s.top_up("key_1", 1.0) for s in stores for _ in range(10)))
    got = await stores[0].get_key("key_1")
    assert got is not None and got.granted_usd == 30.0


async def test_config_keys_sync_and_retire(store: Storage) -> None:
    cfg = key(1, id="cfg-a", models=("demo",))
    await store.sync_config_key(cfg)
    first = await store.get_key("cfg-a")
    assert first is not None and first.status == "active"
    await store.sync_config_key(cfg)  # unchanged: no new rev
    assert await store.get_key("cfg-a") == first
    await store.sync_config_key(replace(cfg, models=("demo", "gpt-4o")))
    second = await store.get_key("cfg-a")
    assert second is not None and second.models == ("demo", "gpt-4o") and second.rev > first.rev
    await store.sync_config_key(key(2, id="cfg-b"))
    await store.create_key(key(3))  # not a config key: never retired
    await store.retire_config_keys(["cfg-b"])
    statuses = {k.id: k.status for k in await store.list_keys()}
    assert statuses == {"cfg-a": "revoked", "cfg-b": "active", "key_3": "active"}
    await store.sync_config_key(cfg)  # listed again: active again
    again = await store.get_key("cfg-a")
    assert again is not None and again.status == "active"


async def test_keys_changed_since_returns_changes_in_rev_order(store: Storage) -> None:
    for n in range(1, 4):
        await store.create_key(key(n))
    mark = max(k.rev for k in await store.list_keys())
    assert await store.keys_changed_since(mark) == []
    await store.update_key("key_2", {"name": "b"})
    await store.update_key("key_1", {"status": "revoked"})
    changed = await store.keys_changed_since(mark)
    assert [k.id for k in changed] == ["key_2", "key_1"] and changed[0].rev < changed[1].rev
    await store.write_usage([row(1, key_id="key_3")])  # the relay's spent does not bump rev
    assert [k.id for k in await store.keys_changed_since(mark)] == ["key_2", "key_1"]


async def test_a_poller_never_misses_a_change_made_by_concurrent_writers(open_store: OpenStore) -> None:
    """What KeyCache does every 0.25 s, with four writers at once: a rev never appears below one already seen."""
    writers = [await open_store() for _ in range(4)]
    poller = await open_store()
    for n in range(len(writers)):
        await writers[0].create_key(key(n))
    seen: dict[str, str] = {}
    last = 0
    done = asyncio.Event()

    async def poll() -> None:
        nonlocal last
        while True:
            finished = done.is_set()
            for k in await poller.keys_changed_since(last):
                seen[k.id] = k.name
                last = max(last, k.rev)
            if finished:
                return
            await asyncio.sleep(0)

    async def write(n: int) -> None:
        for i in range(40):
            await writers[n].update_key(f"key_{n}", {"name": f"v{i}"})

    polling = asyncio.create_task(poll())
    await asyncio.gather(*(write(n) for n in range(len(writers))))
    done.set()
    await polling
    assert seen == {f"key_{n}": "v39" for n in range(len(writers))}


async def test_write_usage_batch_duplicates_and_a_bad_row(store: Storage) -> None:
    await store.create_key(key(1, granted_usd=100.0))
    await store.create_key(key(2))
    assert await store.write_usage([row(i, key_id=f"key_{1 + i % 2}") for i in range(10)]) == 0
    assert await store.count_usage() == 10
    # a retried batch: rows already written are skipped and their cost is not counted again
    assert await store.write_usage([row(i, key_id=f"key_{1 + i % 2}") for i in range(8, 12)]) == 0
    assert await store.count_usage() == 12
    # one bad row (a CHECK) is refused alone; the rest of its batch is written and charged
    refused = await store.write_usage([row(20), row(21, prompt_tokens=-1), row(22, completion_tokens=-3), row(23)])
    assert refused == 2
    assert await store.count_usage() == 14
    spent = {k.id: k.spent_usd for k in await store.list_keys()}
    assert spent == {"key_1": 0.25 * 8, "key_2": 0.25 * 6}
    assert await store.spent_by_ledger() == spent
    assert await store.write_usage([]) == 0


async def test_spent_equals_the_ledger_sum_to_the_cent(store: Storage) -> None:
    await store.create_key(key(1))
    costs = [0.01, 0.07, 1.0, 0.1, 0.2, 0.3, 2.0]
    for batch in range(20):
        await store.write_usage([row(batch * 10 + i, cost_usd=c) for i, c in enumerate(costs)])
    got = await store.get_key("key_1")
    assert got is not None
    assert round(got.spent_usd, 2) == round(20 * sum(costs), 2) == 73.6
    assert (await store.spent_by_ledger())["key_1"] == pytest.approx(got.spent_usd, abs=1e-9)
    await store.write_usage([row(1000 + i, key_id="key_whole", cost_usd=1.0) for i in range(1000)])
    assert (await store.spent_by_ledger())["key_whole"] == 1000.0  # whole dollars add up exactly


async def test_usage_summary_groups_by_key_model_and_day(store: Storage) -> None:
    rows = [
        row(1, ts=T0 + 10, key_id="a", model="m1", prompt_tokens=1, completion_tokens=2, cost_usd=0.5),
        row(2, ts=T0 + 20, key_id="a", model="m1", prompt_tokens=3, completion_tokens=4, cost_usd=0.25, status=502),
        row(3, ts=T0 + DAY + 5, key_id="a", model="m1", prompt_tokens=10, completion_tokens=0, cost_usd=1.0),
        row(4, ts=T0 + DAY - 1, key_id="a", model="m2", prompt_tokens=7, completion_tokens=7, cost_usd=0.0),
        row(5, ts=T0 + 30, key_id="b", model="m1", prompt_tokens=2, completion_tokens=2, cost_usd=0.125),
    ]
    assert await store.write_usage(rows) == 0
    full = await store.usage_summary()
    assert full == [
        {"key": "a", "model": "m1", "day": "2026-01-01", "requests": 2, "ok": 1, "prompt_tokens": 4,
         "completion_tokens": 6, "cost_usd": 0.75},
        {"key": "a", "model": "m1", "day": "2026-01-02", "requests": 1, "ok": 1, "prompt_tokens": 10,
         "completion_tokens": 0, "cost_usd": 1.0},
        {"key": "a", "model": "m2", "day": "2026-01-01", "requests": 1, "ok": 1, "prompt_tokens": 7,
         "completion_tokens": 7, "cost_usd": 0.0},
        {"key": "b", "model": "m1", "day": "2026-01-01", "requests": 1, "ok": 1, "prompt_tokens": 2,
         "completion_tokens": 2, "cost_usd": 0.125},
    ]
    by_model = await store.usage_summary(key_id="a", since=T0 + 15, by=("model",))
    assert [(r["model"], r["requests"], r["prompt_tokens"]) for r in by_model] == [("m1", 2, 13), ("m2", 1, 7)]
    total = await store.usage_summary(by=())
    assert len(total) == 1 and total[0]["requests"] == 5 and total[0]["cost_usd"] == 1.875
    assert await store.usage_summary(key_id="nobody") == []


async def test_availability_counts_served_and_failed_not_client_errors(store: Storage) -> None:
    now = time.time()
    rows = [
        row(1, ts=now, model="m1", channel="c1"),
        row(2, ts=now, model="m1", channel="c1", status=502, end_reason="upstream_error"),
        row(3, ts=now, model="m1", channel="c2", status=400, end_reason="rejected"),  # the client's fault
        row(4, ts=now, model="m2", channel=None, status=503, end_reason="relay_error"),
        row(5, ts=now - 7200, model="m1", channel="c1", status=500),  # too old
    ]
    await store.write_usage(rows)
    got = {(a.scope, a.name): (a.ok, a.failed) for a in await store.availability(now - 3600)}
    assert got == {("model", "m1"): (1, 1), ("model", "m2"): (0, 1), ("channel", "c1"): (1, 1), ("channel", "c2"): (0, 0)}


async def test_opening_migrates_once_and_reports_the_version(open_store: OpenStore) -> None:
    stores = await asyncio.gather(*(open_store() for _ in range(4)))  # four processes starting at once
    assert [s.applied for s in stores].count(()) == 3
    assert {s.schema_version for s in stores} == {len(next(s for s in stores if s.applied).applied)}
    again = await open_store()
    assert again.applied == () and again.schema_version == stores[0].schema_version


# -- balance leases -----------------------------------------------------------------------------------------


async def test_concurrent_leases_never_hand_out_more_than_is_free(open_store: OpenStore) -> None:
    """50 lease calls at once from five connections (as five processes would) share $8 and no more."""
    stores = [await open_store() for _ in range(5)]
    await stores[0].create_key(key(1, granted_usd=10.0))
    await stores[0].write_usage([row(1, cost_usd=2.0)])  # spent: what is free is 10 - 2
    got = await asyncio.gather(*(
        stores[i % 5].lease("key_1", f"holder-{i}", need=0.3, fraction=0.25, ttl=30) for i in range(50)
    ))
    amounts = [g[0] for g in got if g is not None]
    assert len(amounts) == 50
    assert sum(amounts) <= 8.0 + 1e-9
    assert sum(amounts) > 8.0 - 0.3  # everything but less than one `need` was handed out
    assert await stores[0].leased("key_1") == pytest.approx(sum(amounts))
    assert min(a for a in amounts if a > 0) >= 0.3 - 1e-12  # no grant smaller than what was needed
    # what any call reported as still free after it is never more than what it left
    assert all(g[1] >= 0 for g in got if g is not None)


async def test_a_lease_grows_by_a_fraction_of_what_is_free(store: Storage) -> None:
    await store.create_key(key(1, granted_usd=10.0))
    await store.create_key(key(2))
    assert await store.lease("key_1", "p1", need=1.0, fraction=0.5, ttl=30) == (5.0, 5.0)
    assert await store.lease("key_1", "p1", need=1.0, fraction=0.5, ttl=30) == (7.5, 2.5)  # its own lease grows
    assert await store.lease("key_1", "p2", need=2.0, fraction=0.1, ttl=30) == (2.0, 0.5)  # at least `need`
    assert await store.lease("key_1", "p3", need=1.0, fraction=0.5, ttl=30) == (0.0, 0.5)  # less free than needed
    assert await store.lease("key_1", "p3", need=1.0, fraction=1.0, ttl=30, at_least=0.5) == (0.5, 0.0)
    assert await store.leased("key_1") == 10.0
    assert await store.lease("key_2", "p1", need=1.0, fraction=0.5, ttl=30) is None  # no balance limit
    assert await store.lease("key_none", "p1", need=1.0, fraction=0.5, ttl=30) is None


async def test_an_expired_lease_is_reclaimed(open_store: OpenStore) -> None:
    store, other = await open_store(), await open_store()
    await store.create_key(key(1, granted_usd=10.0))
    assert await store.lease("key_1", "gone", need=10.0, fraction=1.0, ttl=0.5) == (10.0, 0.0)
    assert await other.lease("key_1", "p2", need=1.0, fraction=1.0, ttl=30) == (0.0, 0.0)
    await store.release_leases("gone")
    assert await store.lease("key_1", "gone", need=10.0, fraction=1.0, ttl=0.5) == (10.0, 0.0)
    await asyncio.sleep(0.7)
    assert await store.leased("key_1") == 0.0
    assert await store.renew_leases("gone", 30) == {}  # too late: its money may be someone else's now
    assert await other.lease("key_1", "p2", need=1.0, fraction=1.0, ttl=30) == (10.0, 0.0)


async def test_renew_and_release_leases(store: Storage) -> None:
    for n in (1, 2, 3):
        await store.create_key(key(n, granted_usd=4.0))
        await store.lease(f"key_{n}", "p1", need=1.0, fraction=0.5, ttl=0.5)
    await store.lease("key_1", "p2", need=1.0, fraction=0.5, ttl=30)
    assert await store.renew_leases("p1", 30) == {"key_1": 2.0, "key_2": 2.0, "key_3": 2.0}
    await asyncio.sleep(0.7)
    assert await store.leased("key_2") == 2.0  # renewed: still live after its first ttl
    await store.release_leases("p1", ["key_2"])
    assert await store.renew_leases("p1", 30) == {"key_1": 2.0, "key_3": 2.0}
    await store.release_leases("p1")
    assert await store.renew_leases("p1", 30) == {}
    assert await store.leased("key_1") == 1.0  # p2's lease is untouched


async def test_write_usage_pays_from_the_holders_lease(store: Storage) -> None:
    await store.create_key(key(1, granted_usd=10.0))
    await store.create_key(key(2, granted_usd=10.0))
    await store.lease("key_1", "p1", need=5.0, fraction=0.0, ttl=30)
    await store.lease("key_2", "p1", need=1.0, fraction=0.0, ttl=30)
    await store.lease("key_1", "p2", need=1.0, fraction=0.0, ttl=30)
    rows = [row(1, cost_usd=1.0), row(2, cost_usd=0.5), row(3, key_id="key_2", cost_usd=3.0)]
    assert await store.write_usage(rows, "p1") == 0
    assert await store.leased("key_1") == 3.5 + 1.0  # p1's 5 - 1.5, p2's untouched
    assert await store.leased("key_2") == 0.0  # a lease never goes below zero
    spent = {k.id: k.spent_usd for k in await store.list_keys()}
    assert spent == {"key_1": 1.5, "key_2": 3.0}
    # a retried batch pays nothing twice, a bad row pays nothing; without a holder no lease changes
    assert await store.write_usage([row(1, cost_usd=1.0), row(4, cost_usd=-1.0), row(5, cost_usd=0.5)], "p1") == 1
    assert await store.leased("key_1") == 3.0 + 1.0
    await store.write_usage([row(6, cost_usd=1.0)])
    assert await store.leased("key_1") == 3.0 + 1.0
    assert (await store.get_key("key_1")).spent_usd == 3.0  # type: ignore[union-attr]


async def test_spent_between_sums_one_key_in_a_half_open_window(store: Storage) -> None:
    rows = [
        row(1, ts=T0 - 1, cost_usd=4.0), row(2, ts=T0, cost_usd=0.5), row(3, ts=T0 + DAY - 1, cost_usd=0.25),
        row(4, ts=T0 + DAY, cost_usd=8.0), row(5, ts=T0 + 5, key_id="key_2", cost_usd=16.0),
    ]
    assert await store.write_usage(rows) == 0
    assert await store.spent_between("key_1", T0, T0 + DAY) == 0.75
    assert await store.spent_between("key_1", T0 - DAY, T0 + 2 * DAY) == 12.75
    assert await store.spent_between("key_2", T0, T0 + DAY) == 16.0
    assert await store.spent_between("nobody", T0, T0 + DAY) == 0.0
async def test_buckets_written_by_two_processes_add_up(open_store: OpenStore) -> None:
    one, two = await open_store(), await open_store()  # two processes on one database
    start = int(T0)
    await asyncio.gather(
        one.add_buckets([BucketCount("model", "m", start, 3, 1, 30.0, 3), BucketCount("channel", "c", start, 3, 1, 30.0, 3)]),
        two.add_buckets([BucketCount("model", "m", start, 5, 0, 50.0, 5), BucketCount("model", "m", start + 60, 0, 2)]),
    )
    await one.add_buckets([BucketCount("model", "m", start, 1, 1, 10.0, 1)])
    got = await two.buckets_since(start, 60)
    assert got == [
        BucketCount("channel", "c", start, 3, 1, 30.0, 3),
        BucketCount("model", "m", start, 9, 2, 90.0, 9),
        BucketCount("model", "m", start + 60, 0, 2, 0.0, 0),
    ]
    # read with wider buckets, the rows fold into them; from a later start, earlier rows are left out
    assert await one.buckets_since(start, 300) == [
        BucketCount("channel", "c", start, 3, 1, 30.0, 3), BucketCount("model", "m", start, 9, 4, 90.0, 9),
    ]
    assert await one.buckets_since(start + 1, 60) == [BucketCount("model", "m", start + 60, 0, 2, 0.0, 0)]
    totals = await one.bucket_totals([start + 60, start])
    assert totals == {("model", "m"): [(0, 2), (9, 4)], ("channel", "c"): [(0, 0), (3, 1)]}


async def test_pruning_removes_only_buckets_older_than_the_cut(store: Storage) -> None:
    day = int(DAY)
    rows = [BucketCount("model", "m", int(T0) + i * day, 1, 0) for i in range(100)]
    await store.add_buckets(rows)
    assert await store.prune_buckets(int(T0) + 10 * day) == 10
    assert await store.prune_buckets(int(T0) + 10 * day) == 0
    left = await store.buckets_since(0, day)
    assert len(left) == 90 and left[0].start == int(T0) + 10 * day
