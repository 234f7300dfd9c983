"""Routing by endpoint (only channels that serve it) and prompt-cache stickiness. Injected clock."""

from __future__ import annotations

from collections import Counter

from relay.config import ChannelConfig, RetryConfig
from relay.endpoints import ENDPOINTS
from relay.errors import UpstreamFailure
from relay.router import Router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def channel(name: str, keys: int, type_: str = "openai", priority: int = 0, **kw: object) -> ChannelConfig:
    return ChannelConfig(
        name=name, type=type_, base_url="http://x", keys=tuple(f"{name}-k{i}" for i in range(keys)),
        models=("m",), priority=priority, **kw,  # type: ignore[arg-type]
    )


def test_only_channels_serving_the_endpoint_are_picked() -> None:
    r = Router([channel("claude", 2, "anthropic"), channel("oai", 1)], RetryConfig())
    embeddings, chat = ENDPOINTS["embeddings"], ENDPOINTS["chat/completions"]
    assert {r.pick("m", endpoint=embeddings).label for _ in range(10)} == {"oai#0"}  # type: ignore[union-attr]
    assert {r.pick("m", endpoint=chat).label for _ in range(9)} == {"claude#0", "claude#1", "oai#0"}  # type: ignore[union-attr]
    assert r.serves("m", embeddings) and r.serves("m", ENDPOINTS["audio/speech"])


def test_an_endpoint_no_channel_serves_is_not_served() -> None:
    r = Router([channel("claude", 1, "anthropic")], RetryConfig())
    assert r.serves("m") and not r.serves("m", ENDPOINTS["embeddings"])
    assert r.pick("m", endpoint=ENDPOINTS["embeddings"]) is None


def test_responses_false_serves_responses_translated_but_not_stored_calls() -> None:
    r = Router([channel("compat", 1, responses=False)], RetryConfig())
    assert r.serves("m", ENDPOINTS["responses"])
    assert not r.serves("m", ENDPOINTS["responses/retrieve"])


def test_the_same_sticky_value_keeps_one_account() -> None:
    r = Router([channel("a", 3)], RetryConfig(), clock=Clock())
    got = Counter(r.pick("m", sticky="key\0m\0session-1").label for _ in range(100))  # type: ignore[union-attr]
    assert len(got) == 1 and sum(got.values()) == 100
    assert r.sticky.misses == 1 and r.sticky.hits == 99


def test_different_sticky_values_spread_and_processes_agree() -> None:
    one, two = Router([channel("a", 3)], RetryConfig()), Router([channel("a", 3)], RetryConfig())
    values = [f"key\0m\0user-{i}" for i in range(30)]
    first = [one.pick("m", sticky=v).label for v in values]  # type: ignore[union-attr]
    assert len(set(first)) == 3
    # another process (same accounts) binds every value to the same account without talking to this one
    assert [two.pick("m", sticky=v).label for v in values] == first  # type: ignore[union-attr]


def test_a_cooling_sticky_account_moves_the_value_and_the_new_binding_holds() -> None:
    clock = Clock()
    r = Router([channel("a", 3)], RetryConfig(), clock=clock)
    v = "key\0m\0s"
    first = r.pick("m", sticky=v)
    assert first is not None
    r.failed(first, UpstreamFailure("429", kind="rate_limited", status=429, retry_after=30))
    moved = r.pick("m", sticky=v)
    assert moved is not None and moved is not first
    clock.now += 31  # the first account is back, but the value stays where its cache now is
    assert r.pick("m", sticky=v) is moved


def test_a_binding_expires_after_its_ttl_without_use() -> None:
    clock = Clock()
    r = Router([channel("a", 3)], RetryConfig(), clock=clock, sticky_ttl=600)
    v = "key\0m\0s"
    r.pick("m", sticky=v)
    clock.now += 599
    r.pick("m", sticky=v)
    assert r.sticky.hits == 1
    clock.now += 601
    r.pick("m", sticky=v)
    assert r.sticky.misses == 2  # bound afresh (to the same account: the hash still chooses it)


def test_sticky_values_stay_in_the_top_tier() -> None:
    r = Router([channel("low", 2, priority=0), channel("high", 2, priority=5)], RetryConfig())
    assert {r.pick("m", sticky=f"k\0m\0{i}").channel.name for i in range(20)} == {"high"}  # type: ignore[union-attr]


def test_pinned_says_why_an_account_cannot_serve() -> None:
    clock = Clock()
    r = Router([channel("a", 2)], RetryConfig(), clock=clock)
    a0, a1 = r.accounts
    assert r.pinned(a0.uid) == (a0, "")
    r.failed(a0, UpstreamFailure("401", kind="auth", status=401))
    assert r.pinned(a0.uid) == (None, "disabled")
    r.failed(a1, UpstreamFailure("429", kind="rate_limited", status=429, retry_after=5))
    assert r.pinned(a1.uid) == (None, "resting") and 4 < r.rest_left(a1.uid) <= 5
    assert r.pinned("no-such-account") == (None, "gone")
