"""Two relays on one Redis (limits.backend: redis) with probes on: one probes at a time (the leader lock),
and what its probes find (an account out, and back) holds in the other within about a second.

Both relays run in this process on the fake upstream, with a Redis key prefix of this test's own (deleted
afterwards). Without a reachable Redis (RELAY_TEST_REDIS_URL) these tests skip; with CI=true they fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from bench.fake_upstream import status
from relay.app import HEALTH, ROUTER
from relay.router import Account
from tests import redisdb
from tests.conftest import Relay, RelayFactory, Upstream

PROBES = {"enabled": True, "interval": 0.2, "timeout": 2, "failures_to_disable": 2, "successes_to_enable": 2}


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redisdb.redis_client()
    try:
        with redisdb.redis_prefix("health", client) as p:
            yield p
    finally:
        client.close()


def account(relay: Relay, key: str) -> Account:
    return next(a for a in relay.app[ROUTER].accounts if a.key == key)


def probes_sent(relay: Relay) -> int:
    return relay.app[HEALTH].prober.probes_sent


def probes_at(upstream: Upstream) -> int:
    return sum(1 for r in upstream.records if r.path.endswith("/chat/completions") and b'"max_tokens":1,' in r.body)


async def within(seconds: float, cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        await asyncio.sleep(0.02)


async def test_one_relay_probes_and_the_other_sees_an_account_go_out_and_come_back(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str
) -> None:
    limits = {"backend": "redis", "redis_url": redisdb.REDIS_URL, "prefix": prefix, "timeout": 1.0}
    a = await relay_factory(limits=limits, health=PROBES)
    b = await relay_factory(limits=limits, health=PROBES)
    await within(3.0, lambda: probes_at(upstream) >= 6, "two rounds of probes")
    leader, other = (a, b) if probes_sent(a) else (b, a)
    assert probes_sent(other) == 0 and probes_sent(leader) == probes_at(upstream)

    upstream.options.key_answers["acct-1"] = status(401)
    mine, theirs = account(leader, "acct-1"), account(other, "acct-1")
    await within(3.0, lambda: mine.state == "out", "the probing relay takes acct-1 out")
    out_at = time.monotonic()
    await within(1.5, lambda: theirs.state == "out", "the other relay has acct-1 out too")
    assert time.monotonic() - out_at < 1.5 and theirs.out_reason == "credential refused (HTTP 401)"

    del upstream.options.key_answers["acct-1"]
    await within(3.0, lambda: mine.state == "active", "the probing relay brings acct-1 back")
    back_at = time.monotonic()
    await within(1.5, lambda: theirs.state == "active", "the other relay has acct-1 back too")
    assert time.monotonic() - back_at < 1.5
    assert probes_sent(other) == 0 and probes_sent(leader) == probes_at(upstream)


async def test_another_relay_takes_over_the_probes_when_the_leader_stops(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str
) -> None:
    limits = {"backend": "redis", "redis_url": redisdb.REDIS_URL, "prefix": prefix, "timeout": 1.0}
    a = await relay_factory(limits=limits, health=PROBES)
    await within(3.0, lambda: probes_sent(a) >= 3, "relay A probes")
    b = await relay_factory(limits=limits, health=PROBES)
    await asyncio.sleep(0.5)
    assert probes_sent(b) == 0
    await a.app[HEALTH].close()  # A stops probing and gives the lock back
    await within(3.0, lambda: probes_sent(b) >= 3, "relay B takes over")
