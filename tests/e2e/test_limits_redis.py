"""RedisLimiter against a real Redis (RELAY_TEST_REDIS_URL, default redis://127.0.0.1:6379/15).

Without a reachable Redis these tests skip, saying why; with CI=true they fail instead. Each test works
under its own key prefix and deletes only that prefix afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from relay.config import ConfigError
from relay.limits import Limits
from relay.limits_redis import RedisLimiter
from tests import redisdb

REDIS_URL = redisdb.REDIS_URL
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sync_redis() -> Iterator[redis.Redis]:
    client = redisdb.redis_client()
    yield client
    client.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"relay:test:rl:{uuid.uuid4().hex[:12]}:"
    yield p
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2) as client:
            stale = list(client.scan_iter(match=p + "*", count=1000))
            if stale:
                client.delete(*stale)
    except (redis.RedisError, OSError):
        pass  # no Redis: nothing was written


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Any]:
    made: list[RedisLimiter] = []

    async def factory(url: str = REDIS_URL, start: bool = True, **kw: Any) -> RedisLimiter:
        kw.setdefault("prefix", prefix)
        kw.setdefault("timeout", 1.0)  # loopback, but a loaded CI box must not turn into fail-open
        lim = RedisLimiter(url, **kw)
        made.append(lim)
        if start:
            await lim.start()
        return lim

    yield factory
    for lim in made:
        await lim.close()


@pytest.fixture
def live(make: Any, sync_redis: redis.Redis) -> Any:
    """`make`, for tests that need the real Redis (skipped, or failed under CI=true, without one)."""
    return make


def count_round_trips(lim: RedisLimiter) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    inner = lim._redis.execute_command

    async def counted(*args: Any, **kw: Any) -> Any:
        calls.append(args)
        return await inner(*args, **kw)  # type: ignore[no-untyped-call]

    lim._redis.execute_command = counted  # type: ignore[method-assign]
    return calls


async def test_burst_then_refusal_with_the_wait_and_headers(live: Any) -> None:
    lim = await live()
    limits = Limits(rpm=10)
    for i in range(10):
        d = await lim.acquire("k", limits, 0)
        assert d.allowed and d.headers["x-ratelimit-remaining-requests"] == str(9 - i)
    d = await lim.acquire("k", limits, 0)
    assert not d.allowed and d.limit == "rpm"
    assert 5.5 < d.retry_after <= 6.0  # one request per 6 s, less the instant since the burst
    assert d.headers["x-ratelimit-limit-requests"] == "10"
    assert d.headers["x-ratelimit-remaining-requests"] == "0"
    reset = d.headers["x-ratelimit-reset-requests"]  # ~60 s to refill 10, less the instant elapsed
    assert reset == "1m0s" or reset.startswith("59."), reset
    assert (await lim.acquire("other", limits, 0)).allowed  # keys are independent
    assert lim.errors == 0


async def test_sustained_rate_in_real_time(live: Any) -> None:
    """rpm=120 with windows 30x shorter (a minute of refill in 2 s): burst 120 + 60 a second."""
    lim = await live(time_scale=1 / 30)
    limits = Limits(rpm=120)
    first = time.monotonic()
    admitted = int((await lim.acquire("flood", limits, 0)).allowed)
    first_end = time.monotonic()  # the bucket was created (full) by Redis between first and first_end
    while (start := time.monotonic()) - first < 2.0:
        admitted += (await lim.acquire("flood", limits, 0)).allowed
        last_start, last_end = start, time.monotonic()
    # Redis decided the last call between last_start and last_end: a stall delays refill, never loses it
    low = 120 + 60 * (last_start - first_end)
    high = 120 + 60 * (last_end - first)
    assert low - 1 <= admitted <= high + 1, (admitted, low, high)


async def test_settle_rides_on_the_next_acquire_in_one_round_trip(
    live: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    lim = await live()
    calls = count_round_trips(lim)
    limits = Limits(tpm=1000)
    assert (await lim.acquire("k", limits, 1000)).allowed
    d = await lim.acquire("k", limits, 100)
    assert not d.allowed and d.limit == "tpm"
    assert len(calls) == 2 and all(c[0] == "EVALSHA" for c in calls)

    lim.settle("k", limits, 1000, 100)  # 900 back, sent with the next acquire
    assert len(calls) == 2
    d = await lim.acquire("k", limits, 900)
    assert d.allowed and len(calls) == 3
    assert int(d.headers["x-ratelimit-remaining-tokens"]) <= 10

    lim.settle("k", limits, 900, 1900)  # 1000 over the estimate: debt
    d = await lim.acquire("k", limits, 0)
    assert not d.allowed and d.limit == "tpm" and len(calls) == 4
    assert 59.0 < d.retry_after <= 60.0  # ~1000 tokens of debt at 1000 a minute
    level = float(sync_redis.hget(f"{prefix}{{k}}:tpm", "tokens") or 0)
    assert -1000 < level < -980
    ttl = sync_redis.pttl(f"{prefix}{{k}}:tpm")
    assert 119_000 < ttl <= 120_001  # in debt: kept until it would be full, past the 60 s window
    assert lim._pending == {}


async def test_a_correction_survives_a_failed_acquire(make: Any) -> None:
    lim = await make("redis://127.0.0.1:1/0", start=False, fail_open=True, retry_interval=0)
    lim.settle("k", Limits(tpm=100), 50, 10)
    assert (await lim.acquire("k", Limits(tpm=100), 10)).allowed
    assert lim._pending == {"k": 40} and lim.errors == 1


async def test_rpd_and_bucket_expiry(live: Any, sync_redis: redis.Redis, prefix: str) -> None:
    lim = await live()
    limits = Limits(rpd=5)
    for _ in range(5):
        assert (await lim.acquire("k", limits, 0)).allowed
    d = await lim.acquire("k", limits, 0)
    assert not d.allowed and d.limit == "rpd"
    assert 17_279 < d.retry_after <= 17_280
    assert d.headers["x-ratelimit-reset-requests"].startswith("23h59m5")
    assert 86_000_000 < sync_redis.pttl(f"{prefix}{{k}}:rpd") <= 86_400_001


async def test_ipm_and_a_request_that_can_never_fit(live: Any) -> None:
    lim = await live()
    limits = Limits(ipm=10, rpm=100)
    assert (await lim.acquire("k", limits, 0, images=4)).allowed
    assert (await lim.acquire("k", limits, 0, images=4)).allowed
    d = await lim.acquire("k", limits, 0, images=4)
    assert not d.allowed and d.limit == "ipm" and 11.5 < d.retry_after <= 12.0
    d = await lim.acquire("k", limits, 0, images=11)
    assert not d.allowed and d.too_large and d.limit == "ipm" and d.retry_after == 60
    assert d.headers["x-ratelimit-remaining-requests"] == "98"  # the refusals took nothing


async def test_two_limits_the_first_to_fill_refuses(live: Any) -> None:
    lim = await live()
    limits = Limits(rpm=10, tpm=1000)
    for _ in range(3):
        assert (await lim.acquire("a", limits, 300)).allowed
    d = await lim.acquire("a", limits, 300)
    assert not d.allowed and d.limit == "tpm" and 11.5 < d.retry_after <= 12.0
    assert d.headers["x-ratelimit-remaining-requests"] == "7"
    for _ in range(10):
        assert (await lim.acquire("b", limits, 10)).allowed
    d = await lim.acquire("b", limits, 10)
    assert not d.allowed and d.limit == "rpm"


async def test_script_reloaded_on_noscript(live: Any) -> None:
    lim = await live()
    calls = count_round_trips(lim)
    lim._sha = "0" * 40  # as after a Redis restart: the server no longer knows the script
    assert (await lim.acquire("k", Limits(rpm=5), 0)).allowed
    assert [c[0] for c in calls] == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
    assert (await lim.acquire("k", Limits(rpm=5), 0)).allowed
    assert len(calls) == 4 and lim.errors == 0


async def test_start_names_an_unreachable_redis(make: Any) -> None:
    lim = await make("redis://127.0.0.1:1/0", start=False)
    with pytest.raises(ConfigError, match=r"^limits\.redis_url: cannot reach Redis at 127\.0\.0\.1:1 \(.+\)$"):
        await lim.start()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_unreachable_redis_fails_open_or_closed(make: Any, fail_open: bool) -> None:
    lim = await make("redis://127.0.0.1:1/0", start=False, fail_open=fail_open)
    for i in range(3):  # the first fails; the next ones, within retry_interval, do not try again
        d = await lim.acquire("k", Limits(rpm=1), 0)
        if fail_open:
            assert d.allowed and d.limit is None
        else:
            assert not d.allowed and d.limit == "unavailable" and d.retry_after == 1
            assert d.error().status == 429
        assert lim.errors == i + 1
    assert "Connection" in lim.last_error


class Proxy:
    """A TCP hop in front of Redis that can go silent (accept and never answer) or refuse outright."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "forward"  # forward | silent
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        up_r, up_w = await asyncio.open_connection(*self.target)
        self.writers.append(up_w)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    if self.mode == "forward":
                        w.write(data)
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def drop_all(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.drop_all()
        await self.server.wait_closed()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_lost_during_operation(live: Any, fail_open: bool, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="relay.limits")
    target = urlsplit(REDIS_URL)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 6379)
    auth = target.netloc.rpartition("@")[0]
    url = f"{target.scheme}://{auth + '@' if auth else ''}127.0.0.1:{await proxy.start()}{target.path}"
    lim = await live(url, fail_open=fail_open, timeout=0.05, retry_interval=0.2)
    limits = Limits(rpm=1)
    assert (await lim.acquire("k", limits, 0)).allowed
    assert not (await lim.acquire("k", limits, 0)).allowed  # Redis decides: the bucket is empty

    proxy.mode = "silent"  # Redis stops answering: a timeout, not a hang
    t0 = time.monotonic()
    d = await lim.acquire("k", limits, 0)
    assert time.monotonic() - t0 < 0.5
    assert d.allowed is fail_open and lim.errors == 1 and "Timeout" in lim.last_error
    if not fail_open:
        assert d.limit == "unavailable" and d.retry_after == 1
    t0 = time.monotonic()
    d = await lim.acquire("k", limits, 0)  # within retry_interval: decided at once
    assert time.monotonic() - t0 < 0.01 and d.allowed is fail_open and lim.errors == 2

    assert not lim.up
    proxy.mode = "forward"
    await asyncio.sleep(0.25)
    d = await lim.acquire("k", limits, 0)  # back: Redis decides again, and the bucket is still empty
    assert not d.allowed and d.limit == "rpm" and lim.errors == 2
    assert lim.up
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.limits"]
    assert len(lines) == 2 and "failed" in lines[0] and "answers again" in lines[1]  # once each way
    assert ("admitting" if fail_open else "refusing") in lines[0]

    await proxy.stop()  # connections cut and the port closed
    await asyncio.sleep(0.25)
    d = await lim.acquire("k", limits, 0)
    assert d.allowed is fail_open and lim.errors == 3


