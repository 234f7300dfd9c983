"""Which (channel, account) serves the next attempt. Pure: no I/O, an injectable clock.

For a model, accounts are grouped in priority tiers (higher first). Within a tier, a precomputed smooth
weighted round-robin sequence is walked with one cursor, skipping accounts that rest (cooldown), were
refused (disabled), were already tried for this request, or spent their request budget. A pick is O(1)
while accounts are healthy.

Account budgets (the channel's rpm/tpm, token buckets per account in `budgets`, in-process or shared) are
taken by the caller after a pick, with the same try_acquire / acquire pattern as key limits; a refusal is
reported with `over_budget`, which remembers when the account admits again.

The health this module keeps (disabled, cooldown, failure streak) is the local copy every pick reads;
each change is also told to `shared` (relay.health), and `merge` folds in what other processes found.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .config import ChannelConfig, RetryConfig
from .endpoints import ENDPOINTS, Endpoint, mode_for
from .errors import UpstreamFailure
from .health import LocalState, SharedState, account_id
from .limits import Decision, Limiter, Limits, LocalLimiter
from .types import Target

__all__ = ["Account", "Router"]

log = logging.getLogger("relay.router")


@dataclass(eq=False, slots=True)
class Account:
    channel: ChannelConfig
    index: int
    key: str = field(repr=False)
    cooldown_until: float = 0.0
    failures: int = 0  # consecutive soft failures (5xx, connect, timeout)
    disabled: bool = False
    budget: Limits = field(default_factory=Limits)  # the channel's rpm/tpm for each of its accounts
    uid: str = ""  # account_id(key): its name in shared state and budgets
    budget_until: float = 0.0  # its request budget (rpm) is spent until then: not picked, not asked
    budget_back: float = 0.0  # when its last budget refusal said it admits again
    serves: frozenset[str] = frozenset()  # the endpoints its channel serves (relay.endpoints)

    @property
    def label(self) -> str:
        return f"{self.channel.name}#{self.index}"


@dataclass(slots=True)
class _Tier:
    priority: int
    seq: list[Account]
    cursor: int = 0


# Sticky bindings kept (least recently used dropped first): one entry is about 200 bytes.
_STICKY_MAX = 100_000


def _ready(acc: Account, now: float, exclude: set[Account] | frozenset[Account], endpoint: str | None) -> bool:
    return not (
        acc.disabled or acc.cooldown_until > now or acc.budget_until > now or acc in exclude
        or (endpoint is not None and endpoint not in acc.serves)
    )


def _smooth_wrr(weighted: list[tuple[Account, int]]) -> list[Account]:
    """nginx's smooth weighted round-robin, unrolled into one period: weights 5,1,1 -> a a b a c a a."""
    total = sum(w for _, w in weighted)
    current = [0] * len(weighted)
    seq: list[Account] = []
    for _ in range(total):
        for i, (_, w) in enumerate(weighted):
            current[i] += w
        best = max(range(len(weighted)), key=current.__getitem__)
        current[best] -= total
        seq.append(weighted[best][0])
    return seq


class Router:
    def __init__(
        self,
        channels: Iterable[ChannelConfig],
        retry: RetryConfig,
        clock: Callable[[], float] = time.monotonic,
        sticky_ttl: float = 600.0,
    ) -> None:
        self._retry = retry
        self._clock = clock
        self.budgets: Limiter = LocalLimiter(clock)  # replaced by a shared one with limits.backend: redis
        self.shared: SharedState = LocalState()
        self.accounts: list[Account] = []
        self.sticky_ttl = sticky_ttl
        self._sticky: OrderedDict[str, tuple[Account, float]] = OrderedDict()
        self.sticky_hits = self.sticky_misses = 0
        by_model: dict[str, dict[int, list[tuple[Account, int]]]] = {}
        for ch in channels:
            budget = Limits(rpm=ch.rpm, tpm=ch.tpm)
            serves = frozenset(e.name for e in ENDPOINTS.values() if mode_for(e, ch) is not None)
            accs = [
                Account(ch, i, k, budget=budget, uid=account_id(k), serves=serves) for i, k in enumerate(ch.keys)
            ]
            self.accounts.extend(accs)
            for model in ch.models:
                tiers = by_model.setdefault(model, {})
                tiers.setdefault(ch.priority, []).extend((a, ch.weight) for a in accs)
        self._tiers: dict[str, list[_Tier]] = {
            model: [_Tier(p, _smooth_wrr(tiers[p])) for p in sorted(tiers, reverse=True)]
            for model, tiers in by_model.items()
        }
        self._by_uid = {a.uid: a for a in self.accounts}

    def models(self) -> list[str]:
        return sorted(self._tiers)

    def serves(self, model: str, endpoint: Endpoint | None = None) -> bool:
        """Some channel serves `model` (at `endpoint`, when given)."""
        tiers = self._tiers.get(model)
        if tiers is None:
            return False
        return endpoint is None or any(endpoint.name in a.serves for t in tiers for a in t.seq)

    def channels_of(self, model: str) -> list[ChannelConfig]:
        return list({id(a.channel): a.channel for t in self._tiers.get(model, ()) for a in t.seq}.values())

    def pick(
        self, model: str, exclude: set[Account] | frozenset[Account] = frozenset(),
        endpoint: Endpoint | None = None, sticky: str | None = None,
    ) -> Account | None:
        """The next account for `model` (able to serve `endpoint`) that may take a request, or None.

        With `sticky` (a prompt-cache key, user id ... with the client key and model), requests with the same
        value keep to one account of the top tier while it stays healthy and is used at least every
        `sticky_ttl` seconds: upstream prompt caches are per account. Its budget is not taken here.
        """
        now = self._clock()
        name = endpoint.name if endpoint is not None else None
        if sticky is not None:
            return self._sticky_pick(model, exclude, name, sticky, now)
        for tier in self._tiers.get(model, ()):
            seq = tier.seq
            n = len(seq)
            start = tier.cursor
            for k in range(n):
                acc = seq[(start + k) % n]
                if not _ready(acc, now, exclude, name):
                    continue
                tier.cursor = (start + k + 1) % n
                return acc
        return None

    def _sticky_pick(
        self, model: str, exclude: set[Account] | frozenset[Account], name: str | None, sticky: str, now: float,
    ) -> Account | None:
        bound = self._sticky.get(sticky)
        if bound is not None and bound[1] > now and _ready(bound[0], now, exclude, name):
            self.sticky_hits += 1
            self._sticky[sticky] = (bound[0], now + self.sticky_ttl)
            self._sticky.move_to_end(sticky)
            return bound[0]
        for tier in self._tiers.get(model, ()):
            ready = list({id(a): a for a in tier.seq if _ready(a, now, exclude, name)}.values())
            if not ready:
                continue
            # Rendezvous hashing: every process binds the same value to the same account without talking.
            acc = max(ready, key=lambda a: hashlib.blake2b(f"{sticky}\0{a.uid}".encode(), digest_size=8).digest())
            self.sticky_misses += 1
            self._sticky[sticky] = (acc, now + self.sticky_ttl)
            self._sticky.move_to_end(sticky)
            while len(self._sticky) > _STICKY_MAX:
                self._sticky.popitem(last=False)
            return acc
        return None

    def pinned(self, uid: str) -> tuple[Account | None, str]:
        """The account named `uid` if it can take a request now, else None and why: "gone" (no longer
        configured), "disabled" (out of rotation) or "resting" (back after its cooldown)."""
        acc = self._by_uid.get(uid)
        if acc is None:
            return None, "gone"
        if acc.disabled:
            return None, "disabled"
        now = self._clock()
        if acc.cooldown_until > now or acc.budget_until > now:
            return None, "resting"
        return acc, ""

    def rest_left(self, uid: str) -> float:
        acc = self._by_uid.get(uid)
        return 0.0 if acc is None else max(acc.cooldown_until, acc.budget_until) - self._clock()

    def over_budget(self, acc: Account, decision: Decision) -> None:
        """`budgets` refused `acc`: remember when it admits again. A spent request budget (rpm) admits no
        request before then, so the account is left out of picks until then; a token budget may still take a
        smaller request, so it is asked again."""
        back = self._clock() + decision.retry_after
        acc.budget_back = back
        if decision.limit == "rpm" and not decision.too_large:
            acc.budget_until = back

    def settle_budget(self, acc: Account, estimated_tokens: int, actual_tokens: int) -> None:
        if acc.budget.tokens:
            self.budgets.settle(acc.uid, acc.budget, estimated_tokens, actual_tokens)

    def retry_after(self, model: str) -> float | None:
        """Seconds until the first resting or budget-spent account of the model is back (None: none will be)."""
        now = self._clock()
        back = [
            max(a.cooldown_until, a.budget_back)
            for tier in self._tiers.get(model, ())
            for a in tier.seq
            if not a.disabled and (a.cooldown_until > now or a.budget_back > now)
        ]
        return min(back) - now if back else None

    @staticmethod
    def target(acc: Account, model: str) -> Target:
        ch = acc.channel
        return Target(
            channel=ch.name, channel_type=ch.type, base_url=ch.base_url, account=acc.index,
            api_key=acc.key, upstream_model=ch.upstream_model(model), extra_headers=ch.headers,
            api_version=ch.api_version, reasoning=ch.reasoning,
        )

    def succeeded(self, acc: Account) -> None:
        if acc.failures:  # only a running streak costs anything (a shared write): not every success
            acc.failures = 0
            self.shared.recovered(acc.uid)

    def failed(self, acc: Account, failure: UpstreamFailure) -> None:
        kind = failure.kind
        if kind == "auth":
            if not acc.disabled:
                acc.disabled = True
                log.warning("account %s refused its credential (HTTP %s): out of rotation", acc.label, failure.status)
                self.shared.disabled(acc.uid)
        elif kind == "rate_limited":
            wait = failure.retry_after if failure.retry_after is not None else self._retry.cooldown
            rest = min(wait, self._retry.max_cooldown)
            acc.cooldown_until = self._clock() + rest
            self.shared.rested(acc.uid, rest)
        elif kind in ("server", "connect", "timeout"):
            acc.failures += 1
            self.shared.failed(acc.uid)  # the shared streak rests the account for every process
            if acc.failures >= self._retry.failure_threshold:
                acc.failures = 0
                acc.cooldown_until = self._clock() + self._retry.failure_cooldown
                log.warning("account %s failed %d times in a row: resting %.0fs", acc.label,
                            self._retry.failure_threshold, self._retry.failure_cooldown)

    def merge(self, acc: Account, disabled: bool, rest: float, failures: int | None) -> None:
        """Fold in what the other processes found: `disabled`, resting for `rest` more seconds, the shared
        failure streak (None: unknown, keep ours). Never undoes what this process found itself."""
        if disabled and not acc.disabled:
            acc.disabled = True
            log.warning("account %s refused its credential to another relay process: out of rotation", acc.label)
        if rest > 0:
            until = self._clock() + rest
            if until > acc.cooldown_until:
                acc.cooldown_until = until
        if failures is not None:
            acc.failures = failures

    def out_of_rotation(self) -> list[tuple[Account, str]]:
        now = self._clock()
        out = []
        for a in self.accounts:
            if a.disabled:
                out.append((a, "disabled"))
            elif a.cooldown_until > now:
                out.append((a, "cooldown"))
        return out
