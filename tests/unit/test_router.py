"""Routing: weighted round-robin per priority tier, cooldowns, disabled accounts. Injected clock."""

from __future__ import annotations

from collections import Counter

from relay.config import ChannelConfig, RetryConfig
from relay.errors import UpstreamFailure
from relay.router import Account, Router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def channel(name: str, keys: int, weight: int = 1, priority: int = 0, models: tuple[str, ...] = ("m",)) -> ChannelConfig:
    return ChannelConfig(
        name=name, type="openai", base_url="http://x", keys=tuple(f"{name}-k{i}" for i in range(keys)),
        models=models, weight=weight, priority=priority,
    )


def picks(router: Router, n: int, model: str = "m") -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        acc = router.pick(model)
        out[acc.label if acc else "none"] += 1
    return out


def test_round_robin_is_exact_over_equal_accounts() -> None:
    r = Router([channel("a", 3)], RetryConfig())
    assert picks(r, 90) == {"a#0": 30, "a#1": 30, "a#2": 30}


def test_weights_split_traffic_smoothly() -> None:
    r = Router([channel("a", 1, weight=2), channel("b", 1, weight=1)], RetryConfig())
    seq = [r.pick("m").label for _ in range(6)]  # type: ignore[union-attr]
    assert Counter(seq) == {"a#0": 4, "b#0": 2}
    assert seq[:3] != ["a#0", "a#0", "b#0"] or seq[3:] == seq[:3]  # a periodic, interleaved sequence


def test_higher_priority_tier_first_then_fallback() -> None:
    r = Router([channel("low", 1, priority=0), channel("high", 2, priority=10)], RetryConfig())
    assert set(picks(r, 10)) == {"high#0", "high#1"}
    for acc in r.accounts:
        if acc.channel.name == "high":
            r.failed(acc, UpstreamFailure("401", kind="auth", status=401))
    assert picks(r, 5) == {"low#0": 5}


def test_excluded_accounts_are_skipped_for_failover() -> None:
    r = Router([channel("a", 2)], RetryConfig())
    first = r.pick("m")
    assert first is not None
    second = r.pick("m", {first})
    assert second is not None and second is not first
    assert r.pick("m", {first, second}) is None


def test_rate_limited_account_rests_for_retry_after_capped() -> None:
    clock = Clock()
    r = Router([channel("a", 2)], RetryConfig(max_cooldown=60), clock)
    a0 = r.accounts[0]
    r.failed(a0, UpstreamFailure("429", kind="rate_limited", status=429, retry_after=5))
    assert picks(r, 4) == {"a#1": 4}
    assert r.retry_after("m") is None or r.retry_after("m") == 5  # a#1 is healthy: nothing to wait for
    clock.now += 5.01
    assert picks(r, 4) == {"a#0": 2, "a#1": 2}
    r.failed(a0, UpstreamFailure("429", kind="rate_limited", status=429, retry_after=3600))
    assert a0.cooldown_until - clock.now == 60


def test_all_rate_limited_reports_earliest_return() -> None:
    clock = Clock()
    r = Router([channel("a", 2)], RetryConfig(), clock)
    r.failed(r.accounts[0], UpstreamFailure("429", kind="rate_limited", status=429, retry_after=8))
    r.failed(r.accounts[1], UpstreamFailure("429", kind="rate_limited", status=429, retry_after=3))
    assert r.pick("m") is None
    assert r.retry_after("m") == 3


def test_soft_failures_rest_an_account_after_the_threshold() -> None:
    clock = Clock()
    r = Router([channel("a", 2)], RetryConfig(failure_threshold=3, failure_cooldown=5), clock)
    a0 = r.accounts[0]
    for _ in range(2):
        r.failed(a0, UpstreamFailure("500", kind="server", status=500))
    assert a0.cooldown_until <= clock.now
    r.succeeded(a0)  # a success resets the count
    for _ in range(3):
        r.failed(a0, UpstreamFailure("500", kind="server", status=500))
    assert a0.cooldown_until == clock.now + 5
    assert [(a.label, s) for a, s in r.out_of_rotation()] == [("a#0", "cooldown")]


def test_auth_failure_takes_account_out_for_good() -> None:
    clock = Clock()
    r = Router([channel("a", 2)], RetryConfig(), clock)
    r.failed(r.accounts[1], UpstreamFailure("401", kind="auth", status=401))
    clock.now += 10_000
    assert picks(r, 6) == {"a#0": 6}
    assert [(a.label, s) for a, s in r.out_of_rotation()] == [("a#1", "disabled")]


def test_model_map_and_unknown_model() -> None:
    ch = ChannelConfig(name="a", type="openai", base_url="http://x", keys=("k",), models=("pub",),
                       model_map={"pub": "upstream-name"})
    r = Router([ch], RetryConfig())
    acc = r.pick("pub")
    assert acc is not None and r.target(acc, "pub").upstream_model == "upstream-name"
    assert r.pick("other") is None and not r.serves("other")


def take(r: Router, exclude: set[Account] | None = None, tokens: int = 0) -> Account | None:
    """A pick whose budget is then taken, as the proxy does: a refused account is reported and skipped."""
    skip = set(exclude or ())
    while (acc := r.pick("m", skip)) is not None:
        d = r.budgets.try_acquire(acc.uid, acc.budget, tokens)
        assert d is not None  # in-process budgets answer at once
        if d.allowed:
            return acc
        r.over_budget(acc, d)
        skip.add(acc)
    return None


def test_account_budget_skips_a_spent_account_and_reports_when_one_is_back() -> None:
    clock = Clock()
    ch = ChannelConfig(name="a", type="openai", base_url="http://x", keys=("k0", "k1"), models=("m",), rpm=2, tpm=1000)
    r = Router([ch], RetryConfig(), clock)
    assert Counter(take(r).label for _ in range(4)) == {"a#0": 2, "a#1": 2}  # type: ignore[union-attr]
    assert take(r) is None
    wait = r.retry_after("m")
    assert wait is not None and 29 < wait <= 30  # one request of 2 per minute refills in 30 s
    assert r.pick("m") is None  # a spent request budget is not asked again before then
    clock.now += 30
    assert take(r) is not None
    # tokens: an estimate larger than what is left skips the account; a settle refunds the unused part
    clock.now += 1000
    a0 = take(r, tokens=900)
    assert a0 is not None
    assert take(r, {a0}, tokens=900) is not None  # the other account
    assert take(r, tokens=900) is None
    wait = r.retry_after("m")
    assert wait is not None and 47 < wait <= 48  # 800 tokens short at 1000 a minute
    r.settle_budget(a0, 900, 100)  # the request used 100 of the 900 it was admitted on
    assert take(r, tokens=800) is a0


def test_accounts_are_named_by_a_hash_of_their_key() -> None:
    r = Router([channel("a", 2), channel("b", 1)], RetryConfig())
    uids = [a.uid for a in r.accounts]
    assert len(set(uids)) == 3 and all(len(u) == 16 for u in uids)
    assert not any("k0" in u or "k1" in u for u in uids)
    again = Router([channel("b", 1), channel("a", 2, priority=5)], RetryConfig())  # another config, same keys
    assert {a.key: a.uid for a in again.accounts} == {a.key: a.uid for a in r.accounts}
