"""Which (channel, account) serves the next attempt. Pure: no I/O, an injectable clock.

For a model, accounts are grouped in priority tiers (higher first). Within a tier, a precomputed smooth
weighted round-robin sequence is walked with one cursor, skipping accounts that rest (cooldown), were
refused (disabled), were already tried for this request, or have spent their upstream budget (the
channel's rpm/tpm, as token buckets per account). A pick is O(1) while accounts are healthy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .config import ChannelConfig, RetryConfig
from .errors import UpstreamFailure
from .limits import Limits, LocalLimiter
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

    @property
    def label(self) -> str:
        return f"{self.channel.name}#{self.index}"


@dataclass(slots=True)
class _Tier:
    priority: int
    seq: list[Account]
    cursor: int = 0


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
    ) -> None:
        self._retry = retry
        self._clock = clock
        self._budgets = LocalLimiter(clock)
        self._budget_wait: dict[str, float] = {}  # model -> when its budgets, all spent, next admit one
        self.accounts: list[Account] = []
        by_model: dict[str, dict[int, list[tuple[Account, int]]]] = {}
        for ch in channels:
            budget = Limits(rpm=ch.rpm, tpm=ch.tpm)
            accs = [Account(ch, i, k, budget=budget) for i, k in enumerate(ch.keys)]
            self.accounts.extend(accs)
            for model in ch.models:
                tiers = by_model.setdefault(model, {})
                tiers.setdefault(ch.priority, []).extend((a, ch.weight) for a in accs)
        self._tiers: dict[str, list[_Tier]] = {
            model: [_Tier(p, _smooth_wrr(tiers[p])) for p in sorted(tiers, reverse=True)]
            for model, tiers in by_model.items()
        }

    def models(self) -> list[str]:
        return sorted(self._tiers)

    def serves(self, model: str) -> bool:
        return model in self._tiers

    def pick(
        self, model: str, exclude: set[Account] | frozenset[Account] = frozenset(), tokens: int = 0
    ) -> Account | None:
        """The next account for `model` (taking one request and `tokens` from its budget), or None."""
        now = self._clock()
        wait: float | None = None
        for tier in self._tiers.get(model, ()):
            seq = tier.seq
            n = len(seq)
            start = tier.cursor
            for k in range(n):
                acc = seq[(start + k) % n]
                if acc.disabled or acc.cooldown_until > now or acc in exclude:
                    continue
                if acc.budget.any:
                    d = self._budgets.try_acquire(acc.label, acc.budget, tokens)
                    if not d.allowed:
                        wait = d.retry_after if wait is None else min(wait, d.retry_after)
                        continue
                tier.cursor = (start + k + 1) % n
                return acc
        if wait is not None:
            self._budget_wait[model] = now + wait
        return None

    def settle_budget(self, acc: Account, estimated_tokens: int, actual_tokens: int) -> None:
        if acc.budget.tokens:
            self._budgets.settle(acc.label, acc.budget, estimated_tokens, actual_tokens)

    def retry_after(self, model: str) -> float | None:
        """Seconds until the first resting or budget-spent account of the model is back (None: none will be)."""
        now = self._clock()
        waits = [
            a.cooldown_until - now
            for tier in self._tiers.get(model, ())
            for a in tier.seq
            if not a.disabled and a.cooldown_until > now
        ]
        budget = self._budget_wait.get(model)
        if budget is not None and budget > now:
            waits.append(budget - now)
        return min(waits) if waits else None

    @staticmethod
    def target(acc: Account, model: str) -> Target:
        ch = acc.channel
        return Target(
            channel=ch.name, channel_type=ch.type, base_url=ch.base_url, account=acc.index,
            api_key=acc.key, upstream_model=ch.upstream_model(model), extra_headers=ch.headers,
            api_version=ch.api_version,
        )

    def succeeded(self, acc: Account) -> None:
        acc.failures = 0

    def failed(self, acc: Account, failure: UpstreamFailure) -> None:
        kind = failure.kind
        if kind == "auth":
            if not acc.disabled:
                acc.disabled = True
                log.warning("account %s refused its credential (HTTP %s): out of rotation", acc.label, failure.status)
        elif kind == "rate_limited":
            wait = failure.retry_after if failure.retry_after is not None else self._retry.cooldown
            acc.cooldown_until = self._clock() + min(wait, self._retry.max_cooldown)
        elif kind in ("server", "connect", "timeout"):
            acc.failures += 1
            if acc.failures >= self._retry.failure_threshold:
                acc.failures = 0
                acc.cooldown_until = self._clock() + self._retry.failure_cooldown
                log.warning("account %s failed %d times in a row: resting %.0fs", acc.label,
                            self._retry.failure_threshold, self._retry.failure_cooldown)

    def out_of_rotation(self) -> list[tuple[Account, str]]:
        now = self._clock()
        out = []
        for a in self.accounts:
            if a.disabled:
                out.append((a, "disabled"))
            elif a.cooldown_until > now:
                out.append((a, "cooldown"))
        return out
