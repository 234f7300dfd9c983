"""Token-bucket limits with an injected clock: exact counts, never a real sleep."""

from __future__ import annotations

import random

import pytest

from relay.limits import Decision, Limits, LocalLimiter, format_duration
from relay.types import KeyRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lim(clock: Clock) -> LocalLimiter:
    return LocalLimiter(clock=clock)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"), (-3, "0s"), (0.0004, "0s"), (0.0005, "1ms"), (0.12, "120ms"), (0.9994, "999ms"),
        (0.9996, "1s"), (1, "1s"), (1.5, "1.5s"), (59.25, "59.25s"), (60, "1m0s"), (90.5, "1m30.5s"),
        (360, "6m0s"), (3600, "1h0m0s"), (3723, "1h2m3s"), (86_400, "24h0m0s"), (86.4, "1m26.4s"),
    ],
)
def test_format_duration_writes_go_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_limits_of_a_key() -> None:
    key = KeyRecord(id="key_1", name="a", key_hash="h", prefix="sk-AbCd", rpm=60, tpd=10**6)
    limits = Limits.of(key)
    assert limits == Limits(rpm=60, tpd=10**6)
    assert limits.any and limits.tokens
    assert not Limits().any
    assert Limits(ipm=0).any and not Limits(ipm=0).tokens


async def test_no_limits_admits_and_keeps_no_state(lim: LocalLimiter) -> None:
    d = await lim.acquire("k", Limits(), 10**9, 50)
    assert d == Decision(True)
    lim.settle("k", Limits(), 10, 10**6)
    assert len(lim) == 0


async def test_rpm_flood_admits_burst_then_exactly_the_rate(clock: Clock, lim: LocalLimiter) -> None:
    """A request every 0.1 s for 10 minutes against rpm=60: 60 at once, then exactly 60 a minute."""
    limits = Limits(rpm=60)
    start = clock.now
    admitted = 0
    for step in range(6001):  # t = 0.0, 0.1, ..., 600.0
        t = step / 10
        clock.now = start + t
        d = await lim.acquire("k", limits, 0)
        admitted += d.allowed
        assert admitted <= 60 + t + 1e-9  # never ahead of burst + refill
        if d.allowed:
            assert d.limit is None and d.retry_after == 0
        else:
            assert d.limit == "rpm" and 0 < d.retry_after <= 1.0 + 1e-9
        if step and step % 600 == 0:  # each whole minute
            assert admitted == 60 + t, t
    assert admitted == 660


async def test_retry_after_is_exactly_when_the_request_fits(clock: Clock, lim: LocalLimiter) -> None:
    limits = Limits(rpm=6)  # one request per 10 s
    for _ in range(6):
        assert (await lim.acquire("k", limits, 0)).allowed
    clock.now += 2.5
    d = await lim.acquire("k", limits, 0)
    assert not d.allowed and d.retry_after == pytest.approx(7.5)
    clock.now += 7.49
    assert not (await lim.acquire("k", limits, 0)).allowed
    clock.now += 0.01
    assert (await lim.acquire("k", limits, 0)).allowed


async def test_tpm_refund_when_usage_was_below_the_estimate(lim: LocalLimiter) -> None:
    limits = Limits(tpm=1000)
    assert (await lim.acquire("k", limits, 1000)).allowed
    d = await lim.acquire("k", limits, 1)
    assert not d.allowed and d.limit == "tpm"
    assert d.retry_after == pytest.approx(0.06)  # one token at 1000/60 per second
    lim.settle("k", limits, 1000, 100)  # 900 back
    assert (await lim.acquire("k", limits, 900)).allowed
    assert not (await lim.acquire("k", limits, 1)).allowed


async def test_refund_never_fills_past_capacity(clock: Clock, lim: LocalLimiter) -> None:
    limits = Limits(tpm=1000)
    assert (await lim.acquire("k", limits, 200)).allowed
    clock.now += 60  # full again
    lim.settle("k", limits, 200, 0)
    assert not (await lim.acquire("k", limits, 1001)).allowed
    assert (await lim.acquire("k", limits, 1000)).allowed


async def test_debt_when_usage_exceeds_the_estimate(clock: Clock, lim: LocalLimiter) -> None:
    limits = Limits(tpm=1000)
    assert (await lim.acquire("k", limits, 500)).allowed
    lim.settle("k", limits, 500, 1500)  # 1000 more than taken: the bucket is 500 below zero
    d = await lim.acquire("k", limits, 0)
    assert not d.allowed and d.limit == "tpm"
    assert d.retry_after == pytest.approx(30.0)  # 500 tokens of debt at 1000/60 per second
    assert d.headers["x-ratelimit-remaining-tokens"] == "0"
    assert d.headers["x-ratelimit-reset-tokens"] == "1m30s"  # -500 back up to 1000
    clock.now += 30.0
    assert (await lim.acquire("k", limits, 0)).allowed
    assert not (await lim.acquire("k", limits, 1)).allowed


async def test_corrections_keep_tokens_exact_over_time(clock: Clock, lim: LocalLimiter) -> None:
    """Rough estimates (0.3x to 3x the real usage), flooded for 30 minutes: the real tokens admitted stay
    within one request of capacity + refill, neither over nor under."""
    rng = random.Random(7)
    limits = Limits(tpm=10_000)
    start = clock.now
    real = 0
    for step in range(18_001):  # every 0.1 s
        clock.now = start + step / 10
        actual = rng.randint(50, 400)
        estimate = int(actual * rng.uniform(0.3, 3.0))
        if (await lim.acquire("k", limits, estimate)).allowed:
            lim.settle("k", limits, estimate, actual)
            real += actual
    budget = 10_000 + 10_000 * 30
    assert budget - 1200 <= real <= budget + 400


async def test_rpd(clock: Clock, lim: LocalLimiter) -> None:
    limits = Limits(rpd=5)
    for _ in range(5):
        assert (await lim.acquire("k", limits, 0)).allowed
    d = await lim.acquire("k", limits, 0)
    assert not d.allowed and d.limit == "rpd"
    assert d.retry_after == pytest.approx(86_400 / 5)
    assert d.headers["x-ratelimit-reset-requests"] == "24h0m0s"
    clock.now += 86_400 / 5
    assert (await lim.acquire("k", limits, 0)).allowed
    assert not (await lim.acquire("k", limits, 0)).allowed


async def test_ipm_counts_images(clock: Clock, lim: LocalLimiter) -> None:
    limits = Limits(ipm=10)
    assert (await lim.acquire("k", limits, 0, images=4)).allowed
    assert (await lim.acquire("k", limits, 0, images=4)).allowed
    d = await lim.acquire("k", limits, 0, images=4)
    assert not d.allowed and d.limit == "ipm"
    assert d.retry_after == pytest.approx(12.0)  # 2 images short at 10 a minute
    assert (await lim.acquire("k", limits, 500)).allowed  # no images asked: ipm does not apply
    assert (await lim.acquire("k", limits, 0, images=2)).allowed
    clock.now += 60
    assert (await lim.acquire("k", limits, 0, images=10)).allowed


async def test_a_request_over_capacity_can_never_fit(lim: LocalLimiter) -> None:
    d = await lim.acquire("k", Limits(ipm=10, rpm=100), 0, images=11)
    assert not d.allowed and d.too_large and d.limit == "ipm" and d.retry_after == 60
    assert "Limit 10, Requested 11" in d.message
    err = d.error()
    assert err.status == 429 and err.code == "rate_limit_exceeded" and err.should_retry is False
    # rpm was not charged for the refused request
    assert d.headers["x-ratelimit-remaining-requests"] == "100"
    d = await lim.acquire("k", Limits(tpm=1000, tpd=10**6), 2000)
    assert d.too_large and d.limit == "tpm" and "Request too large on tokens per min (TPM)" in d.message
    d = await lim.acquire("k", Limits(rpm=0), 0)
    assert not d.allowed and d.too_large and d.limit == "rpm"


async def test_two_limits_the_first_to_fill_refuses(clock: Clock, lim: LocalLimiter) -> None:
    limits = Limits(rpm=10, tpm=1000)
    for _ in range(3):
        assert (await lim.acquire("a", limits, 300)).allowed
    d = await lim.acquire("a", limits, 300)
    assert not d.allowed and d.limit == "tpm"
    assert d.retry_after == pytest.approx(200 * 60 / 1000)
    # the refusal took nothing: 7 requests and 100 tokens left
    assert d.headers["x-ratelimit-remaining-requests"] == "7"
    assert d.headers["x-ratelimit-remaining-tokens"] == "100"
    assert (await lim.acquire("a", limits, 100)).allowed

    for _ in range(10):
        assert (await lim.acquire("b", limits, 10)).allowed
    d = await lim.acquire("b", limits, 10)
    assert not d.allowed and d.limit == "rpm" and d.retry_after == pytest.approx(6.0)

    # both refuse: the longer wait is the one to report
    for _ in range(10):
        assert (await lim.acquire("c", limits, 95)).allowed
    d = await lim.acquire("c", limits, 100)  # rpm: 6 s; tpm: 50 tokens short, 3 s
    assert d.limit == "rpm" and d.retry_after == pytest.approx(6.0)
    clock.now += 3
    d = await lim.acquire("c", limits, 900)  # rpm: 3 s; tpm: 900 - 100 short, 48 s
    assert d.limit == "tpm" and d.retry_after == pytest.approx(48.0)


async def test_headers(clock: Clock, lim: LocalLimiter) -> None:
    d = await lim.acquire("k", Limits(rpm=60, tpm=1000), 100)
    assert d.headers == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6s",
    }
    clock.now += 0.5
    d = await lim.acquire("k", Limits(rpm=60, tpm=1000), 0)
    assert d.headers["x-ratelimit-remaining-requests"] == "58"  # 59 + 0.5 refilled - 1
    assert d.headers["x-ratelimit-reset-requests"] == "1.5s"
    assert d.headers["x-ratelimit-remaining-tokens"] == "908"  # 900 + 8.33 refilled
    assert d.headers["x-ratelimit-reset-tokens"] == "5.5s"
    # rpd and tpd stand in when no per-minute limit is set
    d = await lim.acquire("d", Limits(rpd=1000, tpd=1_000_000, ipm=5), 500_000)
    assert d.headers == {
        "x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "999",
        "x-ratelimit-reset-requests": "1m26.4s", "x-ratelimit-limit-tokens": "1000000",
        "x-ratelimit-remaining-tokens": "500000", "x-ratelimit-reset-tokens": "12h0m0s",
    }
    # a pair whose limit is unset is left out
    d = await lim.acquire("i", Limits(ipm=5, tpm=100), 10, images=1)
    assert set(d.headers) == {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                              "x-ratelimit-reset-tokens"}
    assert (await lim.acquire("j", Limits(ipm=5), 0, images=1)).headers == {}


async def test_refusal_error_carries_the_headers(lim: LocalLimiter) -> None:
    limits = Limits(tpm=100)
    await lim.acquire("k", limits, 100)
    d = await lim.acquire("k", limits, 50)
    err = d.error()
    assert err.status == 429 and err.type == "tokens" and err.should_retry is None
    assert err.headers["retry-after"] == "30" and err.headers["retry-after-ms"] == "30000"
    assert err.headers["x-ratelimit-remaining-tokens"] == "0"
    assert err.message == ("Rate limit reached on tokens per min (TPM): Limit 100, Used 100, Requested 50. "
                           "Please try again in 30s.")


async def test_share_divides_every_limit(clock: Clock) -> None:
    lim = LocalLimiter(clock=clock, share=4)
    limits = Limits(rpm=60, tpm=1001)
    for _ in range(15):
        assert (await lim.acquire("k", limits, 1)).allowed
    d = await lim.acquire("k", limits, 1)
    assert not d.allowed and d.limit == "rpm" and d.retry_after == pytest.approx(4.0)
    assert d.headers["x-ratelimit-limit-requests"] == "15"
    assert d.headers["x-ratelimit-limit-tokens"] == "251"  # ceil(1001 / 4)
    assert (await lim.acquire("j", Limits(tpm=1001), 252)).too_large


async def test_a_lowered_limit_applies_at_once(lim: LocalLimiter) -> None:
    assert (await lim.acquire("k", Limits(rpm=100), 0)).allowed
    for _ in range(5):
        assert (await lim.acquire("k", Limits(rpm=5), 0)).allowed
    assert not (await lim.acquire("k", Limits(rpm=5), 0)).allowed


async def test_keys_are_independent(lim: LocalLimiter) -> None:
    assert (await lim.acquire("a", Limits(rpm=1), 0)).allowed
    assert not (await lim.acquire("a", Limits(rpm=1), 0)).allowed
    assert (await lim.acquire("b", Limits(rpm=1), 0)).allowed
    assert len(lim) == 2
