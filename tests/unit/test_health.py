"""Shared account health, the pure part: account ids, the outbox, the outage state, and how the router
reports changes and folds in what other processes found. Injected clocks, no sockets."""

from __future__ import annotations

import logging

import pytest

from relay.config import ChannelConfig, RetryConfig
from relay.errors import UpstreamFailure
from relay.health import Outage, Outbox, account_id
from relay.limits import Decision
from relay.router import Router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A SharedState that writes down what the router told it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def disabled(self, uid: str, reason: str = "") -> None:
        self.calls.append(("disabled", uid))

    def enabled(self, uid: str) -> None:
        self.calls.append(("enabled", uid))

    def rested(self, uid: str, seconds: float) -> None:
        self.calls.append(("rested", uid, str(seconds)))

    def failed(self, uid: str) -> None:
        self.calls.append(("failed", uid))

    def recovered(self, uid: str) -> None:
        self.calls.append(("recovered", uid))

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def router(clock: Clock, **retry: float) -> tuple[Router, Recorder]:
    ch = ChannelConfig(name="a", type="openai", base_url="http://x", keys=("sk-one", "sk-two"), models=("m",))
    r = Router([ch], RetryConfig(**retry), clock)  # type: ignore[arg-type]
    rec = Recorder()
    r.shared = rec
    return r, rec


def test_account_id_is_a_short_stable_hash_that_hides_the_key() -> None:
    uid = account_id("sk-secret-123")
    assert uid == account_id("sk-secret-123") and len(uid) == 16 and int(uid, 16) >= 0
    assert uid != account_id("sk-secret-124") and "secret" not in uid


def test_outbox_keeps_one_change_per_account() -> None:
    box = Outbox()
    box.failed("x")
    box.failed("x")
    box.rested("x", 50.0)
    box.rested("x", 20.0)  # a shorter rest does not cut a longer one
    box.disabled("y")
    assert len(box) == 2 and "x" in box
    changes = box.take()
    assert len(box) == 0
    assert (changes["x"].failures, changes["x"].rest_until, changes["x"].disabled) == (2, 50.0, False)
    assert changes["y"].disabled


def test_a_success_clears_the_failures_before_it_but_not_those_after() -> None:
    box = Outbox()
    box.failed("x")
    box.recovered("x")
    box.failed("x")
    c = box.take()["x"]
    assert c.reset and c.failures == 1  # clear the shared streak, then count the new failure


def test_a_failed_write_keeps_refusals_and_live_rests_but_not_streaks() -> None:
    box = Outbox()
    box.disabled("a")
    box.rested("b", 90.0)
    box.rested("c", 10.0)
    box.failed("d")
    box.put_back(box.take(), now=50.0)
    box.failed("a")  # a newer change merges with what came back
    left = box.take()
    assert set(left) == {"a", "b"}
    assert left["a"].disabled and left["a"].failures == 1 and left["b"].rest_until == 90.0


def test_outage_is_logged_once_each_way_and_keeps_callers_away_for_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.shared")
    clock = Clock()
    o = Outage(retry_interval=1.0, clock=clock)
    assert o.up and not o.skip()
    o.failed("ConnectionError: refused")
    o.failed("ConnectionError: refused")
    assert not o.up and o.errors == 2 and o.last_error == "ConnectionError: refused"
    assert o.skip() and o.skip()  # within the second: decide locally, no call
    clock.now += 1.0
    assert not o.skip()  # the first caller after the interval tries...
    assert o.skip()  # ...and the others keep away while it does
    o.failed("TimeoutError: ")
    clock.now += 0.5
    assert o.skip()
    clock.now += 0.6
    assert not o.skip()
    o.ok()
    o.ok()
    assert o.up and not o.skip() and o.errors == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "unavailable (ConnectionError: refused)" in messages[0]
    assert "available again after 2.1s" in messages[1]


def test_router_reports_each_finding_by_account_id() -> None:
    clock = Clock()
    r, rec = router(clock, max_cooldown=60, failure_threshold=3)
    a0, a1 = r.accounts
    r.failed(a0, UpstreamFailure("401", kind="auth", status=401))
    r.failed(a0, UpstreamFailure("401", kind="auth", status=401))  # already out: nothing new to tell
    r.failed(a1, UpstreamFailure("429", kind="rate_limited", status=429, retry_after=600))
    r.failed(a1, UpstreamFailure("500", kind="server", status=500))
    assert rec.calls == [("disabled", a0.uid), ("rested", a1.uid, "60"), ("failed", a1.uid)]
    assert "sk-" not in repr(rec.calls)


def test_a_success_costs_a_shared_write_only_when_it_ends_a_streak() -> None:
    clock = Clock()
    r, rec = router(clock)
    a0 = r.accounts[0]
    for _ in range(100):
        r.succeeded(a0)
    assert rec.calls == []
    r.failed(a0, UpstreamFailure("500", kind="server", status=500))
    r.succeeded(a0)
    r.succeeded(a0)
    assert rec.calls == [("failed", a0.uid), ("recovered", a0.uid)]
    r.merge(a0, False, 0.0, 2)  # another process's streak on this account
    r.succeeded(a0)
    assert rec.calls[-1] == ("recovered", a0.uid) and len(rec.calls) == 3


def test_merge_folds_in_other_processes_findings_on_this_clock() -> None:
    clock = Clock()
    r, rec = router(clock, failure_threshold=3, failure_cooldown=5)
    a0, a1 = r.accounts
    r.merge(a0, True, 0.0, None)
    assert a0.disabled and [(a.label, s) for a, s in r.out_of_rotation()] == [("a#0", "disabled")]
    r.merge(a0, None, 0.0, None)  # unknown (a change of this process on its way): kept
    assert a0.disabled
    r.merge(a0, False, 0.0, None)  # brought back by another process: back here too, told to no one
    assert not a0.disabled and r.state(a0) == "active"
    r.merge(a0, True, 0.0, None, "credential refused (HTTP 401)")
    assert a0.state == "out" and a0.out_reason == "credential refused (HTTP 401)"
    r.merge(a1, False, 12.5, None)  # rests 12.5 s more, whatever this process's monotonic clock reads
    assert a1.cooldown_until == clock.now + 12.5
    assert r.pick("m") is None and r.retry_after("m") == 12.5
    r.merge(a1, False, 3.0, None)  # never shortened
    assert a1.cooldown_until == clock.now + 12.5
    clock.now += 13
    assert r.pick("m") is a1
    # a streak two failures long elsewhere: one more here reaches the threshold of 3
    r.merge(a1, False, 0.0, 2)
    r.failed(a1, UpstreamFailure("502", kind="server", status=502))
    assert a1.cooldown_until == clock.now + 5 and a1.failures == 0
    assert rec.calls == [("failed", a1.uid)]


def test_a_spent_request_budget_is_skipped_until_it_refills_a_token_budget_is_asked_again() -> None:
    clock = Clock()
    r, _ = router(clock)
    a0, a1 = r.accounts
    r.over_budget(a0, Decision(False, "rpm", 6.0))
    assert r.pick("m") is a1 and r.pick("m") is a1
    r.over_budget(a1, Decision(False, "tpm", 30.0))
    assert r.pick("m") is a1  # a smaller request may still fit its tokens
    assert r.retry_after("m") == 6.0  # the earliest an account admits a request again
    clock.now += 6.0
    assert r.pick("m", {a1}) is a0
