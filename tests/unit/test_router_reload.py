"""Router.reload: channels replaced at run time keep the health of the accounts that stay; accounts the
operator turned off leave rotation. Injected clock."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from relay.config import ChannelConfig, RetryConfig
from relay.errors import UpstreamFailure
from relay.health import account_id
from relay.router import Router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def channel(name: str, keys: int, models: tuple[str, ...] = ("m",), **extra: object) -> ChannelConfig:
    return ChannelConfig(
        name=name, type="openai", base_url="http://x", keys=tuple(f"{name}-k{i}" for i in range(keys)),
        models=models, **extra,  # type: ignore[arg-type]
    )


def picks(router: Router, n: int, model: str = "m") -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        acc = router.pick(model)
        out[acc.label if acc else "none"] += 1
    return out


def test_a_reload_adds_changes_and_removes_models() -> None:
    r = Router([channel("a", 2)], RetryConfig())
    g = r.generation
    r.reload([channel("a", 2), channel("b", 1, models=("n",))])
    assert r.models() == ["m", "n"] and r.generation == g + 1
    assert picks(r, 4, "n") == {"b#0": 4}
    r.reload([channel("a", 2, models=("m2",))])
    assert r.models() == ["m2"] and not r.serves("m") and r.pick("n") is None
    assert picks(r, 4, "m2") == {"a#0": 2, "a#1": 2}


def test_accounts_that_stay_keep_their_object_and_health() -> None:
    clock = Clock()
    r = Router([channel("a", 3)], RetryConfig(), clock=clock)
    rested, refused, fresh = r.accounts
    r.failed(rested, UpstreamFailure("429", kind="rate_limited", status=429, retry_after=30))
    r.failed(refused, UpstreamFailure("401", kind="auth", status=401))
    # the base_url changes and a key is added: the accounts of the same channel and key stay as they were
    changed = replace(channel("a", 4), base_url="http://other")
    r.reload([changed])
    assert r.accounts[:3] == [rested, refused, fresh]
    assert rested.cooldown_until > clock.now and refused.disabled and rested.channel.base_url == "http://other"
    assert picks(r, 4) == {"a#2": 2, "a#3": 2}
    # the same key in a channel of another name is another account
    r.reload([replace(changed, name="z")])
    assert all(not a.disabled and a.cooldown_until == 0 for a in r.accounts)


def test_an_account_turned_off_leaves_rotation_until_turned_on() -> None:
    r = Router([channel("a", 3)], RetryConfig())
    off = {("a", account_id("a-k1"))}
    r.reload([channel("a", 3)], off)
    assert picks(r, 6) == {"a#0": 3, "a#2": 3}
    assert r.pinned(account_id("a-k1")) == (None, "disabled")
    assert [(a.label, why) for a, why in r.out_of_rotation()] == [("a#1", "off")]
    r.reload([channel("a", 3)])
    assert picks(r, 6) == {"a#0": 2, "a#1": 2, "a#2": 2}


def test_sticky_bindings_to_removed_accounts_are_dropped() -> None:
    r = Router([channel("a", 2)], RetryConfig())
    bound = r.pick("m", sticky="user-1")
    assert bound is not None
    r.reload([channel("b", 1)])
    again = r.pick("m", sticky="user-1")
    assert again is not None and again.channel.name == "b"
