"""Account health shared between relay processes: the pure part (no I/O, an injectable clock).

The router keeps the copy of every account's health it reads on each pick (disabled, resting until, the
current failure streak) and tells a `SharedState` what it finds. `LocalState` is the in-process
implementation (limits.backend: local): the router's own copy is the whole truth, so it does nothing.
relay.health_redis.RedisState writes every change to Redis at once and folds what the other processes
found into the router's copy a few times a second.

An account is named across processes and machines by `account_id(key)`, a hash of its upstream key: channel
names and indexes may differ between configs, and the key itself must never reach Redis, logs or metrics.

An account is in one of three states: `active`, `resting` (a cooldown: after an upstream 429, kept apart as
`rate_limited`, or after a failure streak, `failed`) or `out` (taken out of rotation with a reason: its
credential refused, its quota spent, failed probes; it comes back only through `Router.bring_back`, after
passing probes). `Transition` is one move into or out of `out`; `ProbeResult` one probe's answer.

`Outbox` holds the changes not yet written (at most one entry per account: bounded by the config), and
`Outage` is the up/down state of the shared store: logged once when it starts and once when it ends, and
while it lasts the store is left alone for `retry_interval` seconds at a time, so no request pays a timeout.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import UpstreamFailure

__all__ = [
    "ACTIVE", "OUT", "RESTING", "STATES", "Change", "LocalState", "Outage", "Outbox", "ProbeResult", "SharedState",
    "Transition", "account_id", "quota_failure",
]

ACTIVE, RESTING, OUT = "active", "resting", "out"
STATES = (ACTIVE, RESTING, OUT)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of one account. `error` is a short reason (a status and the upstream's error code), never a
    key and never the upstream's message text (OpenAI's 401 message quotes part of the key)."""

    channel: str
    account: int
    uid: str
    model: str  # the public model name probed
    ok: bool
    kind: str  # "ok" or the failure: auth | quota | rate_limited | server | connect | timeout | bad_request
    status: int | None
    latency_ms: float
    error: str
    at: float  # unix time


@dataclass(frozen=True, slots=True)
class Transition:
    """An account taken out of rotation or brought back. `cause` is from a small fixed set (a metrics
    label): auth | quota | probes_failed | probes_passed | operator | shared; `reason` is the sentence logged."""

    channel: str
    account: int
    uid: str
    from_state: str
    to_state: str
    cause: str
    reason: str
    at: float  # unix time
    local: bool = True  # found by this process (False: merged from another one through shared state)

    def webhook_body(self) -> dict[str, object]:
        return {
            "channel": self.channel, "account": self.account, "from": self.from_state, "to": self.to_state,
            "reason": self.reason, "at": self.at,
        }


def quota_failure(failure: UpstreamFailure, keywords: tuple[bytes, ...]) -> UpstreamFailure:
    """`failure` as kind "quota" when its error body holds one of `keywords` (lower case): the account cannot
    serve anyone (no money, closed), so it goes out of rotation and the request fails over to the next one.
    Only 4xx answers are read (a 5xx is the provider's trouble, whatever it says)."""
    if failure.kind in ("client", "rate_limited", "auth") and failure.body and keywords:
        low = failure.body[:65536].lower()
        for k in keywords:
            if k in low:
                failure.kind = "quota"
                failure.reason = f"upstream account out of quota or closed ({k.decode(errors='replace')})"
                break
    return failure

log = logging.getLogger("relay.shared")


def account_id(key: str) -> str:
    """16 hex digits of sha256(key): the same account in every process, without revealing its key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class SharedState(Protocol):
    """What the router reports about an account (by `account_id`); called on the failure path only,
    and `recovered` only when a success ends a running streak. None of these may wait."""

    def disabled(self, uid: str, reason: str = "") -> None: ...

    def enabled(self, uid: str) -> None: ...

    def rested(self, uid: str, seconds: float) -> None: ...

    def failed(self, uid: str) -> None: ...

    def recovered(self, uid: str) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalState:
    """One process alone: the router's copy is the state, there is nothing to tell anyone."""

    def disabled(self, uid: str, reason: str = "") -> None:
        pass

    def enabled(self, uid: str) -> None:
        pass

    def rested(self, uid: str, seconds: float) -> None:
        pass

    def failed(self, uid: str) -> None:
        pass

    def recovered(self, uid: str) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass(slots=True)
class Change:
    """What this process found about one account since the last write."""

    disabled: bool = False
    reason: str = ""  # why it was taken out (with `disabled`)
    enabled: bool = False  # brought back: clear the refusal, the rest and the streak for every process
    rest_until: float = 0.0  # wall-clock seconds (processes' monotonic clocks differ); 0: no rest
    reset: bool = False  # a success ended the streak: clear the shared count before adding `failures`
    failures: int = 0  # soft failures to add to the shared streak


class Outbox:
    """Changes waiting to be written, one entry per account."""

    __slots__ = ("_changes",)

    def __init__(self) -> None:
        self._changes: dict[str, Change] = {}

    def __len__(self) -> int:
        return len(self._changes)

    def __contains__(self, uid: object) -> bool:
        return uid in self._changes

    def _get(self, uid: str) -> Change:
        c = self._changes.get(uid)
        if c is None:
            c = self._changes[uid] = Change()
        return c

    def disabled(self, uid: str, reason: str = "") -> None:
        c = self._get(uid)
        c.disabled, c.enabled, c.reason = True, False, reason

    def enabled(self, uid: str) -> None:
        c = self._get(uid)
        c.disabled, c.enabled, c.reason, c.rest_until, c.failures = False, True, "", 0.0, 0

    def rested(self, uid: str, until: float) -> None:
        c = self._get(uid)
        c.rest_until = max(c.rest_until, until)

    def failed(self, uid: str) -> None:
        self._get(uid).failures += 1

    def recovered(self, uid: str) -> None:
        c = self._get(uid)
        c.reset, c.failures = True, 0

    def take(self) -> dict[str, Change]:
        out, self._changes = self._changes, {}
        return out

    def put_back(self, changes: dict[str, Change], now: float) -> None:
        """A write failed: keep its refusals and rests (not yet over at wall time `now`) for the next one.
        Streak counts are dropped: failures seen while the store was away stay this process's own."""
        for uid, old in changes.items():
            if old.disabled:
                self.disabled(uid, old.reason)
            elif old.enabled and not self._get(uid).disabled:  # unless taken out again meanwhile
                self._get(uid).enabled = True
            if old.rest_until > now:
                self.rested(uid, old.rest_until)


class Outage:
    """Whether the shared store answers. `skip()` before each call; `failed()` or `ok()` after it.

    While down, one caller every `retry_interval` seconds gets to try (the first to ask after the interval),
    every other one is told to decide locally at once.
    """

    def __init__(self, retry_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_interval = retry_interval
        self.up = True
        self.errors = 0  # calls to the store that failed or timed out
        self.last_error = ""
        self._clock = clock
        self._since = 0.0
        self._retry_at = 0.0

    def skip(self) -> bool:
        if self.up:
            return False
        now = self._clock()
        if now < self._retry_at:
            return True
        self._retry_at = now + self.retry_interval  # this caller probes; the others keep away meanwhile
        return False

    def failed(self, error: str) -> None:
        now = self._clock()
        self.errors += 1
        self.last_error = error
        self._retry_at = now + self.retry_interval
        if self.up:
            self.up, self._since = False, now
            log.warning(
                "shared account state unavailable (%s): deciding with this process's own state, "
                "retrying every %.0fs", error, self.retry_interval,
            )

    def ok(self) -> None:
        if not self.up:
            self.up = True
            log.warning("shared account state available again after %.1fs", self._clock() - self._since)
