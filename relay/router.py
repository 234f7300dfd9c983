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

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .config import ChannelConfig, RetryConfig
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
        self.budgets: Limiter = LocalLimiter(clock)  # replaced by a shared one with limits.backend: redis
        self.shared: SharedState = LocalState()
        self.accounts: list[Account] = []
        by_model: dict[str, dict[int, list[tuple[Account, int]]]] = {}
        for ch in channels:
            budget = Limits(rpm=ch.rpm, tpm=ch.tpm)
            accs = [Account(ch, i, k, budget=budget, uid=account_id(k)) for i, k in enumerate(ch.keys)]
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

    def pick(self, model: str, exclude: set[Account] | frozenset[Account] = frozenset()) -> Account | None:
        """The next account for `model` that may take a request, or None. Its budget is not taken here."""
        now = self._clock()
        for tier in self._tiers.get(model, ()):
            seq = tier.seq
            n = len(seq)
            start = tier.cursor
            for k in range(n):
                acc = seq[(start + k) % n]
                if acc.disabled or acc.cooldown_until > now or acc.budget_until > now or acc in exclude:
                    continue
                tier.cursor = (start + k + 1) % n
                return acc
        return None

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
            api_version=ch.api_version,
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
