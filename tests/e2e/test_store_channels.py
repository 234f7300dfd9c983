"""The channels table's contract, on both stores (a real SQLite file and a real PostgreSQL database): revs as
the channel pollers read them, tombstones, conflicts, writes that lost a race, config seeding."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from relay.store_api import ChannelRow
from tests.e2e.test_store_contract import OpenStore, open_store, store  # noqa: F401 - the fixtures

__all__: list[str] = []


def api_row(name: str, **kw: object) -> ChannelRow:
    base = ChannelRow(
        name=name, source="api", settings={"base_url": "http://x", "models": ["m"]}, sealed={"keys": "v1.sealed"},
        accounts=("uid-a", "uid-b"),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def test_create_get_list_update_delete_and_the_revs_pollers_read(store) -> None:
    created = await store.create_channel(api_row("a"))
    assert created is not None and created.rev > 0 and created.sealed == {"keys": "v1.sealed"}
    assert await store.create_channel(api_row("a")) is None  # a live channel has the name
    b = await store.create_channel(api_row("b"))
    assert b is not None and b.rev > created.rev
    assert [c.name for c in await store.list_channels()] == ["a", "b"]
    changed = await store.update_channel(replace(created, settings={"base_url": "http://y", "models": ["n"]},
                                                 accounts_off=("uid-b",)))
    assert changed is not None and changed.rev > b.rev and changed.accounts_off == ("uid-b",)
    assert await store.update_channel(created) is None  # written at an old rev: lost the race, read again
    assert [c.name for c in await store.channels_changed_since(b.rev)] == ["a"]
    assert await store.delete_channel("a") and not await store.delete_channel("a")
    assert await store.get_channel("a") is None and [c.name for c in await store.list_channels()] == ["b"]
    (tomb,) = await store.channels_changed_since(changed.rev)
    assert tomb.name == "a" and tomb.deleted and tomb.sealed == {}  # the pollers see it go; its secrets are gone
    again = await store.create_channel(api_row("a"))  # over the tombstone
    assert again is not None and again.rev > tomb.rev and again.accounts_off == ()


async def test_config_seeding_writes_only_changes_and_keeps_what_the_operator_turned_off(store) -> None:
    seeded = ChannelRow(name="c", source="config", settings={"base_url": "http://x", "models": ["m"]}, sealed={},
                        accounts=("u1", "u2"))
    await store.sync_config_channel(seeded)
    first = await store.get_channel("c")
    assert first is not None and first.source == "config"
    await store.sync_config_channel(seeded)
    assert (await store.get_channel("c")).rev == first.rev  # unchanged: no new rev, no reload anywhere
    off = await store.update_channel(replace(first, accounts_off=("u2",)))
    assert off is not None
    await store.sync_config_channel(replace(seeded, settings={"base_url": "http://x", "models": ["m", "n"]}))
    now = await store.get_channel("c")
    assert now is not None and now.rev > off.rev and now.accounts_off == ("u2",) and now.settings["models"] == ["m", "n"]
    assert await store.create_channel(api_row("api")) is not None
    assert await store.retire_config_channels(["other"]) == ["c"]
    assert [c.name for c in await store.list_channels()] == ["api"]  # API channels are left alone


async def test_concurrent_writers_from_two_stores_get_distinct_ordered_revs(open_store) -> None:
    one, two = await open_store(), await open_store()
    await asyncio.gather(*(s.create_channel(api_row(f"c{i}")) for i, s in enumerate([one, two] * 5)))
    revs = [c.rev for c in await one.channels_changed_since(0)]
    assert len(revs) == 10 and revs == sorted(set(revs))


async def test_writes_and_reads_of_two_stores_interleaving_never_fail(open_store) -> None:
    """Two processes' stores writing while each also reads (a write then a read of what it wrote, as the
    admin API does): no "database is locked", however the calls interleave on one connection."""
    one, two = await open_store(), await open_store()
    for n in range(8):
        rows = await asyncio.gather(*(s.create_channel(api_row(f"r{n}-{i}")) for i, s in enumerate([one, two] * 5)),
                                    *(s.list_channels() for s in (one, two)), *(s.channels_changed_since(0) for s in (one, two)))
        assert all(r is not None for r in rows[:10])
    assert len(await one.list_channels()) == 80
