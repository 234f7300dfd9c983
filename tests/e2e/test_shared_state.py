"""Two relays sharing account health and budgets through a real Redis (limits.backend: redis).

Both relays run in this process, each with its own SQLite file, on the same channel of three accounts on
the fake upstream, with the same Redis URL and a key prefix of this test's own (deleted afterwards). Without
a reachable Redis (RELAY_TEST_REDIS_URL, default redis://127.0.0.1:6379/15) these tests skip, saying why;
with CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis

from bench import fake_upstream as fake
from relay.app import ROUTER
from relay.router import Account
from tests import redisdb
from tests.conftest import ACCOUNTS, CLIENT_KEY, Relay, RelayFactory, Upstream

REDIS_URL = redisdb.REDIS_URL
BODY = {"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def sync_redis() -> Iterator[redis.Redis]:
    client = redisdb.redis_client()
    yield client
    client.close()


@pytest.fixture
def prefix(sync_redis: redis.Redis) -> Iterator[str]:
    with redisdb.redis_prefix("shared", sync_redis) as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start_relay(relay_factory: RelayFactory, prefix: str, url: str = REDIS_URL, **overrides: Any) -> Relay:
    # timeout 1 s: loopback, but a loaded machine must not make a relay fall back to its own state
    limits = {"backend": "redis", "redis_url": url, "prefix": prefix, "timeout": 1.0}
    return await relay_factory(limits=limits, **overrides)


async def pair(relay_factory: RelayFactory, prefix: str, **overrides: Any) -> tuple[Relay, Relay]:
    return (await start_relay(relay_factory, prefix, **overrides),
            await start_relay(relay_factory, prefix, **overrides))


def account(relay: Relay, key: str) -> Account:
    return next(a for a in relay.app[ROUTER].accounts if a.key == key)


async def chat(http: aiohttp.ClientSession, relay: Relay) -> tuple[int, dict[str, str]]:
    async with http.post(relay.v1 + "/chat/completions", json=BODY, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:
        await r.read()
        return r.status, dict(r.headers)


def keys_since(upstream: Upstream, mark: int) -> Counter[str]:
    return Counter(r.key for r in upstream.records[mark:])


async def until_hit(http: aiohttp.ClientSession, relay: Relay, upstream: Upstream, key: str, n: int = 1) -> None:
    """Requests through `relay` (each succeeds, failing over) until `key` was reached `n` more times."""
    start = keys_since(upstream, 0)[key]
    for _ in range(10 * n):
        status, _ = await chat(http, relay)
        assert status == 200
        if keys_since(upstream, 0)[key] - start >= n:
            return
    raise AssertionError(f"{key} was never reached")


async def within(seconds: float, cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        await asyncio.sleep(0.02)


def resting(acc: Account) -> bool:
    return acc.cooldown_until > time.monotonic()


async def test_an_account_refused_to_one_relay_is_skipped_by_the_other_within_a_second(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str, http: aiohttp.ClientSession
) -> None:
    a, b = await pair(relay_factory, prefix, status={"show_channels": True})
    upstream.script["acct-1"] = [fake.status(401)] * 50  # any request that reaches it is recorded
    await until_hit(http, a, upstream, "acct-1")
    assert account(a, "acct-1").disabled
    await within(1.0, lambda: account(b, "acct-1").disabled, "relay B takes acct-1 out of rotation")
    mark = len(upstream.records)
    for _ in range(9):
        assert (await chat(http, b))[0] == 200
    assert set(keys_since(upstream, mark)) == {"acct-0", "acct-2"}
    async with http.get(b.url + "/metrics") as r:
        text = await r.text()
    assert 'relay_accounts_out_of_rotation{channel="fake",state="disabled"} 1.0' in text
    async with http.get(b.url + "/status.json") as r:  # the status page names accounts with show_channels
        (channel,) = (await r.json())["channels"]
    assert channel["name"] == "fake" and channel["accounts_out"] == [{"index": 1, "state": "disabled"}]


async def test_a_rate_limited_account_rests_on_both_relays_until_its_retry_after(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str, http: aiohttp.ClientSession
) -> None:
    a, b = await pair(relay_factory, prefix)
    upstream.script["acct-1"] = [fake.status(429, retry_after=2)]
    await until_hit(http, a, upstream, "acct-1")
    ends = time.monotonic() + 2
    await within(1.0, lambda: resting(account(b, "acct-1")), "relay B rests acct-1")
    assert account(b, "acct-1").cooldown_until == pytest.approx(ends, abs=0.5)  # the wall-clock rest, on B's clock
    mark = len(upstream.records)
    for _ in range(6):
        assert (await chat(http, b))[0] == 200
    assert "acct-1" not in keys_since(upstream, mark)
    await asyncio.sleep(max(0.0, ends - time.monotonic()) + 0.1)
    mark = len(upstream.records)
    for _ in range(6):
        assert (await chat(http, b))[0] == 200
    assert keys_since(upstream, mark)["acct-1"] >= 1  # back in B's rotation once the rest is over


async def test_a_failure_streak_is_counted_across_relays(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str, http: aiohttp.ClientSession
) -> None:
    a, b = await pair(relay_factory, prefix, retry={"failure_threshold": 3, "failure_cooldown": 30})
    upstream.script["acct-1"] = [fake.status(500), fake.status(500)]
    await until_hit(http, a, upstream, "acct-1", 2)
    assert not resting(account(a, "acct-1"))  # 2 of 3
    await within(1.0, lambda: account(b, "acct-1").failures == 2, "relay B sees the running streak")
    upstream.script["acct-1"] = [fake.status(500)]
    await until_hit(http, b, upstream, "acct-1")
    assert resting(account(b, "acct-1"))  # the third failure in a row, through the other relay
    await within(1.0, lambda: resting(account(a, "acct-1")), "relay A rests acct-1 too")
    mark = len(upstream.records)
    for relay in (a, b, a, b, a, b):
        assert (await chat(http, relay))[0] == 200
    assert "acct-1" not in keys_since(upstream, mark)


async def test_a_success_ends_the_shared_streak(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str, http: aiohttp.ClientSession
) -> None:
    a, b = await pair(relay_factory, prefix, retry={"failure_threshold": 3, "failure_cooldown": 30})
    upstream.script["acct-1"] = [fake.status(500), fake.status(500)]
    await until_hit(http, a, upstream, "acct-1", 2)
    await within(1.0, lambda: account(b, "acct-1").failures == 2, "relay B sees the running streak")
    await until_hit(http, b, upstream, "acct-1")  # answered: the streak is over
    await within(1.0, lambda: account(a, "acct-1").failures == 0, "relay A learns the streak ended")
    upstream.script["acct-1"] = [fake.status(500)]
    await until_hit(http, a, upstream, "acct-1")
    assert not resting(account(a, "acct-1")) and account(a, "acct-1").failures == 1


async def test_account_budgets_are_shared_by_both_relays(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str, http: aiohttp.ClientSession
) -> None:
    channel = {"name": "fake", "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS), "models": ["demo"], "rpm": 2}
    a, b = await pair(relay_factory, prefix, channels=[channel])
    results = [await chat(http, relay) for relay in (a, b) * 5]
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 6 and statuses.count(429) == 4, statuses  # 2 per account in all, not 2 per relay
    assert keys_since(upstream, 0) == {"acct-0": 2, "acct-1": 2, "acct-2": 2}
    for status, headers in results:
        if status == 429:
            assert 1 <= int(headers["Retry-After"]) <= 30


class Hop:
    """A TCP hop in front of Redis on a fixed port, which can be stopped (connections refused) and started again."""

    def __init__(self) -> None:
        u = urlsplit(REDIS_URL)
        self.target = (u.hostname or "127.0.0.1", u.port or 6379)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        u = urlsplit(REDIS_URL)
        auth = u.netloc.rpartition("@")[0]
        return f"{u.scheme}://{auth + '@' if auth else ''}127.0.0.1:{self.port}{u.path}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


async def metric(http: aiohttp.ClientSession, relay: Relay, name: str) -> float:
    async with http.get(relay.url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_redis_down_requests_go_on_with_local_state_logged_once_and_counted(
    relay_factory: RelayFactory, upstream: Upstream, prefix: str, http: aiohttp.ClientSession,
    sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.shared")
    hop = Hop()
    await hop.start()
    channel = {"name": "fake", "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS), "models": ["demo"],
               "rpm": 1000}  # a budget: each request asks Redis
    relay = await start_relay(relay_factory, prefix, hop.url, channels=[channel])
    try:
        assert (await chat(http, relay))[0] == 200
        assert await metric(http, relay, "relay_shared_state_up") == 1
        assert await metric(http, relay, "relay_shared_state_errors_total") == 0

        await hop.stop()  # Redis gone: connections cut, the port refuses
        upstream.script["acct-1"] = [fake.status(401)] * 50
        for _ in range(12):
            assert (await chat(http, relay))[0] == 200
        assert account(relay, "acct-1").disabled  # found and acted on locally
        mark = len(upstream.records)
        for _ in range(6):
            assert (await chat(http, relay))[0] == 200
        assert "acct-1" not in keys_since(upstream, mark)
        assert await metric(http, relay, "relay_shared_state_up") == 0
        assert await metric(http, relay, "relay_shared_state_errors_total") >= 1
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(down) == 1 and "acct-" not in down[0].getMessage()  # never an upstream key

        await hop.start()  # back on the same port
        uid = account(relay, "acct-1").uid
        await within(5.0, lambda: sync_redis.get(f"{prefix}acct:{uid}:off") == b"credential refused (HTTP 401)",
                     "the refusal found during the outage reaches Redis once it is back")
        for _ in range(50):  # the relay reads the answer to that write just after Redis applied it
            if await metric(http, relay, "relay_shared_state_up") == 1:
                break
            await asyncio.sleep(0.02)
        assert await metric(http, relay, "relay_shared_state_up") == 1
        assert (await chat(http, relay))[0] == 200
        messages = [r.getMessage() for r in caplog.records if r.name == "relay.shared"]
        assert sum("unavailable" in m for m in messages) == 1
        assert sum("available again" in m for m in messages) == 1
    finally:
        if hop.server is not None and hop.server.is_serving():
            await hop.stop()
