"""Account states and probes, the parts without sockets: the router's state machine (take out, bring back,
what a failure does, why no account is available) on an injected clock, quota answers, the probe's request
and reading, the prober's streaks with a stub upstream, and the `health:` config section."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from relay.config import ChannelConfig, ConfigError, RetryConfig, parse_config
from relay.config_health import DEFAULT_ERROR_KEYWORDS, HealthConfig
from relay.errors import UpstreamFailure
from relay.health import Transition, quota_failure
from relay.limits import Decision
from relay.prober import Prober
from relay.probes import probe_request
from relay.router import Account, Router
from relay.types import UpstreamRequest

KEYWORDS = tuple(k.encode() for k in DEFAULT_ERROR_KEYWORDS)
OPENAI_QUOTA = orjson.dumps({"error": {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(clock: Clock, keys: int = 2, **retry: Any) -> tuple[Router, list[Transition]]:
    ch = ChannelConfig(name="a", type="openai", base_url="http://x", keys=tuple(f"sk-{i}" for i in range(keys)),
                       models=("m",))
    r = Router([ch], RetryConfig(**retry), clock)
    r.error_keywords = KEYWORDS
    seen: list[Transition] = []
    r.on_transition.append(seen.append)
    return r, seen


def test_take_out_and_bring_back_move_the_account_once_each_way() -> None:
    clock = Clock()
    r, seen = router(clock)
    a0, a1 = r.accounts
    assert r.state(a0) == "active"
    assert r.take_out(a0, "3 probes in a row failed (HTTP 500)", "probes_failed")
    assert not r.take_out(a0, "again", "probes_failed")  # out already: no second transition
    assert r.state(a0) == "out" and a0.out_reason == "3 probes in a row failed (HTTP 500)"
    assert [r.pick("m") for _ in range(3)] == [a1, a1, a1]
    assert r.bring_back(a0, "2 probes in a row passed", "probes_passed")
    assert not r.bring_back(a0, "again", "probes_passed")
    assert r.state(a0) == "active" and a0.out_reason == "" and r.pick("m", {a1}) is a0
    assert [(t.account, t.from_state, t.to_state, t.cause) for t in seen] == [
        (0, "active", "out", "probes_failed"), (0, "out", "active", "probes_passed")]
    assert all(t.local and "sk-" not in repr(t) for t in seen)


@dataclass(eq=False)
class SwitchedOff(Account):
    """An account the operator switched off (the `manual_off` flag the operator's controls set)."""

    manual_off: bool = True


def test_an_account_the_operator_switched_off_is_never_brought_back_by_probes_or_other_processes() -> None:
    clock = Clock()
    r, seen = router(clock)
    acc = SwitchedOff(r.accounts[0].channel, 0, "sk-0", disabled=True, out_reason="switched off")
    assert not r.bring_back(acc, "2 probes in a row passed", "probes_passed")
    r.merge(acc, False, 0.0, None)
    assert r.state(acc) == "out" and acc.out_reason == "switched off" and seen == []


def test_refused_credential_and_spent_quota_take_the_account_out_a_rest_is_remembered_by_why() -> None:
    clock = Clock()
    r, seen = router(clock, keys=3, failure_threshold=2, failure_cooldown=5, cooldown=10)
    a0, a1, a2 = r.accounts
    r.failed(a0, UpstreamFailure("401", kind="auth", status=401))
    quota = UpstreamFailure("429", kind="rate_limited", status=429, body=OPENAI_QUOTA)
    r.failed(a1, quota)
    assert quota.kind == "quota" and quota.retryable  # the request moves on to the next account
    assert (r.state(a0), r.state(a1)) == ("out", "out")
    assert a0.out_reason == "credential refused (HTTP 401)" and "out of quota" in a1.out_reason
    assert [t.cause for t in seen] == ["auth", "quota"]
    r.failed(a2, UpstreamFailure("500", kind="server", status=500))
    r.failed(a2, UpstreamFailure("500", kind="server", status=500))
    assert r.state(a2) == "resting" and a2.rest_reason == "failed"
    assert r.unavailable("m") == ("failed", 5.0)  # only failures: a 503, back in 5 s
    clock.now += 5
    r.failed(a2, UpstreamFailure("429", kind="rate_limited", status=429, retry_after=7))
    assert a2.rest_reason == "rate_limited" and r.unavailable("m") == ("rate_limited", 7.0)
    clock.now += 7
    assert r.pick("m") is a2 and r.unavailable("m") == ("failed", None)


def test_a_spent_budget_is_a_rate_limit_an_out_account_is_not_waited_for() -> None:
    clock = Clock()
    r, _ = router(clock)
    a0, a1 = r.accounts
    r.take_out(a0, "credential refused (HTTP 401)", "auth")
    assert r.unavailable("m") == ("failed", None)
    r.over_budget(a1, Decision(False, "rpm", 4.0))
    assert r.unavailable("m") == ("rate_limited", 4.0)


def test_quota_keywords_are_read_in_4xx_bodies_only() -> None:
    anthropic = orjson.dumps({"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing."}})
    assert quota_failure(UpstreamFailure("400", kind="client", status=400, body=anthropic), KEYWORDS).kind == "quota"
    plain = UpstreamFailure("429", kind="rate_limited", status=429, body=b'{"error":{"code":"rate_limit_exceeded"}}')
    assert quota_failure(plain, KEYWORDS).kind == "rate_limited"
    server = UpstreamFailure("500", kind="server", status=500, body=b"insufficient_quota")
    assert quota_failure(server, KEYWORDS).kind == "server"
    # Gemini's per-minute limits say "exceeded your current quota": a rate limit, not a spent account
    gemini = orjson.dumps({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                     "message": "You exceeded your current quota, please check your plan."}})
    assert quota_failure(UpstreamFailure("429", kind="rate_limited", status=429, body=gemini), KEYWORDS).kind == "rate_limited"


def test_the_probe_is_a_one_token_chat_built_by_the_channel_adapter() -> None:
    ch = ChannelConfig(name="c", type="anthropic", base_url="https://api.anthropic.com", keys=("sk-ant",),
                       models=("claude-x", "claude-y"), test_model="claude-y", model_map={"claude-y": "claude-y-1"})
    r = Router([ch], RetryConfig())
    ureq = probe_request(ch, r.target(r.accounts[0], "claude-y"))
    assert ureq.url == "https://api.anthropic.com/v1/messages" and ureq.headers["x-api-key"] == "sk-ant"
    body = orjson.loads(ureq.body)  # type: ignore[arg-type]
    assert body["model"] == "claude-y-1" and body["max_tokens"] == 1


class StubUpstream:
    """Answers probes from a per-key table (status, body) or raises a connect failure."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes] | None] = {}
        self.calls = 0

    async def call(self, ureq: UpstreamRequest, timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        self.calls += 1
        key = ureq.headers["Authorization"].removeprefix("Bearer ")
        answer = self.answers.get(key, (200, b'{"choices": []}'))
        if answer is None:
            raise UpstreamFailure("could not connect", kind="connect", status=502)
        return answer[0], {"content-type": "application/json"}, answer[1]


def prober(clock: Clock, **health: Any) -> tuple[Prober, Router, StubUpstream, list[Any]]:
    r, _ = router(clock)
    up = StubUpstream()
    results: list[Any] = []
    cfg = HealthConfig(**{"failures_to_disable": 3, "successes_to_enable": 2, **health})
    return Prober(r, up, cfg, results.append, clock=clock), r, up, results  # type: ignore[arg-type]


async def test_n_failed_probes_take_an_account_out_k_passing_ones_bring_it_back() -> None:
    clock = Clock()
    p, r, up, results = prober(clock)
    a0 = r.accounts[0]
    up.answers["sk-0"] = (500, b'{"error": {"message": "boom", "type": "server_error", "code": null}}')
    for _ in range(2):
        await p.probe(a0)
    assert r.state(a0) == "active" and p.record(a0).fail_streak == 2  # type: ignore[union-attr]
    await p.probe(a0)
    assert r.state(a0) == "out" and a0.out_reason == "3 probes in a row failed (HTTP 500 server_error)"
    up.answers["sk-0"] = None  # now it refuses connections: stays out
    await p.probe(a0)
    assert r.state(a0) == "out" and results[-1].kind == "connect" and results[-1].status is None
    del up.answers["sk-0"]
    await p.probe(a0)
    assert r.state(a0) == "out"  # one pass is not enough
    await p.probe(a0)
    assert r.state(a0) == "active" and results[-1].ok and results[-1].kind == "ok"
    assert [x.ok for x in results] == [False, False, False, False, True, True]


async def test_a_refused_probe_takes_out_at_once_a_bad_request_or_rate_limit_moves_nothing() -> None:
    clock = Clock()
    p, r, up, results = prober(clock)
    a0, a1 = r.accounts
    up.answers["sk-0"] = (401, b'{"error": {"message": "Incorrect API key provided: sk-0***", "code": "invalid_api_key"}}')
    await p.probe(a0)
    assert r.state(a0) == "out" and results[-1].kind == "auth"
    assert results[-1].error == "HTTP 401 invalid_api_key" and "sk-" not in repr(results[-1])
    up.answers["sk-1"] = (400, b'{"error": {"message": "model not found", "code": "model_not_found"}}')
    for _ in range(5):
        await p.probe(a1)
    assert r.state(a1) == "active" and results[-1].kind == "bad_request"
    up.answers["sk-1"] = (429, b'{"error": {"code": "rate_limit_exceeded"}}')
    await p.probe(a1)
    assert r.state(a1) == "resting" and a1.rest_reason == "rate_limited"


async def test_probes_of_a_round_are_spread_and_an_out_account_is_probed_sooner() -> None:
    clock = Clock()
    p, r, up, _ = prober(clock, interval=60.0)
    spread = iter([0.1, 0.9])
    p._rng = lambda: next(spread)  # noqa: SLF001 - the first due times: 6 s and 54 s in
    p._launch_due()  # noqa: SLF001
    assert up.calls == 0
    clock.now += 6
    p._launch_due()  # noqa: SLF001
    await asyncio.sleep(0)
    await asyncio.gather(*p._inflight)  # noqa: SLF001
    assert up.calls == 1
    r.take_out(r.accounts[0], "test")
    due = {a.index: p.record(a).due for a in r.accounts}  # type: ignore[union-attr]
    assert due[1] == 1054.0 and due[0] == pytest.approx(1066.0)  # probed at 1006, next after the interval
    up.answers["sk-0"] = (401, b"{}")
    clock.now = due[0]
    p._launch_due()  # noqa: SLF001
    await asyncio.gather(*p._inflight)  # noqa: SLF001
    assert p.record(r.accounts[0]).due == pytest.approx(clock.now + 15)  # type: ignore[union-attr]
    await p.close()


def test_health_section_defaults_and_errors_name_the_path() -> None:
    base = {"channels": [{"name": "c", "base_url": "http://x", "keys": ["k"], "models": ["m1", "m2"]}]}
    cfg = parse_config(base, {})
    assert cfg.health == HealthConfig() and cfg.health.interval == 60 and cfg.channels[0].test_model is None  # probes then use the first model
    cfg = parse_config({**base, "health": {"interval": 5, "webhook_url": "https://ops.example/hook",
                                           "error_keywords": ["Out Of Credit"]}}, {})
    assert cfg.health.interval == 5 and cfg.health.error_keywords == ("out of credit",)
    with pytest.raises(ConfigError, match=r"^health\.webhook_url: must be an http"):
        parse_config({**base, "health": {"webhook_url": "ftp://x"}}, {})
    with pytest.raises(ConfigError, match=r"^health\.intervall: unknown field"):
        parse_config({**base, "health": {"intervall": 5}}, {})
