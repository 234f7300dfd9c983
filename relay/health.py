"""Account health shared between relay processes: the pure part (no I/O, an injectable clock).

The router keeps the copy of every account's health it reads on each pick (disabled, resting until, the
current failure streak) and tells a `SharedState` what it finds. `LocalState` is the in-process
implementation (limits.backend: local): the router's own copy is the whole truth, so it does nothing.
relay.health_redis.RedisState writes every change to Redis at once and folds what the other processes
found into the router's copy a few times a second.

An account is named across processes and machines by `account_id(key)`, a hash of its upstream key: channel
names and indexes may differ between configs, and the key itself must never reach Redis, logs or metrics.

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

__all__ = ["Change", "LocalState", "Outage", "Outbox", "SharedState", "account_id"]

log = logging.getLogger("relay.shared")


def account_id(key: str) -> str:
    """16 hex digits of sha256(key): the same account in every process, without revealing its key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class SharedState(Protocol):
    """What the router reports about an account (by `account_id`); called on the failure path only,
    and `recovered` only when a success ends a running streak. None of these may wait."""

    def disabled(self, uid: str) -> None: ...

    def rested(self, uid: str, seconds: float) -> None: ...

    def failed(self, uid: str) -> None: ...

    def recovered(self, uid: str) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalState:
    """One process alone: the router's copy is the state, there is nothing to tell anyone."""

    def disabled(self, uid: str) -> None:
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

    def disabled(self, uid: str) -> None:
        self._get(uid).disabled = True

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
                self.disabled(uid)
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
