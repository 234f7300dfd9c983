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

Account states (relay.health): `active`, `resting` (cooldown; `rest_reason` says whether after an upstream
429, "rate_limited", or a failure streak, "failed") and `out` (`disabled`, with `out_reason`). An account goes
out on a refused credential (401/403), an answer saying its quota is spent (kind "quota", see
relay.health.quota_failure) or through `take_out` (failed probes, the operator); it comes back only through
`bring_back` (passing probes), which refuses an account the operator switched off (`manual_off`). Each move
into or out of `out` is handed to every callable in `on_transition` (log, metrics, webhook).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from .config import ChannelConfig, RetryConfig
from .endpoints import ENDPOINTS, Endpoint, mode_for
from .errors import UpstreamFailure
from .health import ACTIVE, OUT, RESTING, LocalState, SharedState, Transition, account_id, quota_failure
from .limits import Decision, Limiter, Limits, LocalLimiter
from .sticky import StickyBindings
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
    out_reason: str = ""  # why it is out of rotation (while `disabled`)
    rest_reason: str = ""  # why it rests: "rate_limited" (an upstream 429) or "failed" (a failure streak)
    manual_off: bool = False  # the operator turned it off (POST /admin/channels/{name}/accounts/{i}/disable)

    @property
    def label(self) -> str:
        return f"{self.channel.name}#{self.index}"

    @property
    def state(self) -> str:
        """active | resting | out, on the monotonic clock (Router.state reads the router's own clock)."""
        return _state(self, time.monotonic())


def _state(acc: Account, now: float) -> str:
    return OUT if acc.disabled else RESTING if acc.cooldown_until > now else ACTIVE


@dataclass(slots=True)
class _Tier:
    priority: int
    seq: list[Account]
    cursor: int = 0


def _ready(acc: Account, now: float, exclude: set[Account] | frozenset[Account], endpoint: str | None) -> bool:
    return not (
        acc.disabled or acc.manual_off or acc.cooldown_until > now or acc.budget_until > now or acc in exclude
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
        self.error_keywords: tuple[bytes, ...] = ()  # lower case; an error body holding one: kind "quota"
        self.on_transition: list[Callable[[Transition], None]] = []
        self.accounts: list[Account] = []
        self.sticky: StickyBindings[Account] = StickyBindings(sticky_ttl)
        self._tiers: dict[str, list[_Tier]] = {}
        self._by_uid: dict[str, Account] = {}
        self.generation = 0  # bumped by each reload: what derives from the channels (model lists) is rebuilt
        self.reload(channels)

    def reload(self, channels: Iterable[ChannelConfig], off: Container[tuple[str, str]] = frozenset()) -> None:
        """Serve these channels from now on; `off` holds (channel name, account uid) the operator turned off.

        The new tiers are built aside and swapped in at once (nothing awaits in between). An account that
        stays (same channel name, same key) keeps its Account object, so its health (cooldown, failure
        streak, refusal) carries over and requests in flight on it report to the object the router uses.
        """
        old = {(a.channel.name, a.uid): a for a in self.accounts}
        accounts: list[Account] = []
        by_model: dict[str, dict[int, list[tuple[Account, int]]]] = {}
        for ch in channels:
            budget = Limits(rpm=ch.rpm, tpm=ch.tpm)
            serves = frozenset(e.name for e in ENDPOINTS.values() if mode_for(e, ch) is not None)
            accs = []
            for i, k in enumerate(ch.keys):
                uid = account_id(k)
                acc = old.pop((ch.name, uid), None)
                if acc is None:
                    acc = Account(ch, i, k, budget=budget, uid=uid, serves=serves)
                else:
                    acc.channel, acc.index, acc.key, acc.budget, acc.serves = ch, i, k, budget, serves
                acc.manual_off = (ch.name, uid) in off
                accs.append(acc)
            accounts.extend(accs)
            for model in ch.models:
                tiers = by_model.setdefault(model, {})
                tiers.setdefault(ch.priority, []).extend((a, ch.weight) for a in accs)
        tiers_by_model = {
            model: [_Tier(p, _smooth_wrr(tiers[p])) for p in sorted(tiers, reverse=True)]
            for model, tiers in by_model.items()
        }
        by_uid = {a.uid: a for a in accounts}
        self._tiers, self.accounts, self._by_uid = tiers_by_model, accounts, by_uid
        self.sticky.keep_only(set(by_uid.values()))
        self.generation += 1

    def models(self) -> list[str]:
        return sorted(self._tiers)

    def keys(self) -> list[str]:
        """Every upstream key in rotation (for masking them out of what clients see)."""
        return [a.key for a in self.accounts]

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
        `sticky_ttl` seconds (relay/sticky.py). Its budget is not taken here.
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
        bound = self.sticky.get(sticky, now, lambda a: _ready(a, now, exclude, name))
        if bound is not None:
            return bound
        for tier in self._tiers.get(model, ()):
            ready = list({id(a): a for a in tier.seq if _ready(a, now, exclude, name)}.values())
            if ready:
                return self.sticky.bind(sticky, ready, now)
        return None

    def pinned(self, uid: str) -> tuple[Account | None, str]:
        """The account named `uid` if it can take a request now, else None and why: "gone" (no longer
        configured), "disabled" (out of rotation) or "resting" (back after its cooldown)."""
        acc = self._by_uid.get(uid)
        if acc is None:
            return None, "gone"
        if acc.disabled or acc.manual_off:
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
            if not (a.disabled or a.manual_off) and (a.cooldown_until > now or a.budget_back > now)
        ]
        return min(back) - now if back else None

    def unavailable(self, model: str) -> tuple[str, float | None]:
        """Why no account of `model` takes a request now, and in how many seconds the first is back (None: none
        will be on its own). "rate_limited" when one rests after an upstream 429 or has spent its budget (a
        real rate limit: 429 to the client); "failed" when they rest after failures or are out (503)."""
        now = self._clock()
        limited: list[float] = []
        failed: list[float] = []
        for tier in self._tiers.get(model, ()):
            for a in tier.seq:
                if a.disabled:
                    continue
                if a.budget_back > now or (a.cooldown_until > now and a.rest_reason != "failed"):
                    limited.append(max(a.cooldown_until, a.budget_back))
                elif a.cooldown_until > now:
                    failed.append(a.cooldown_until)
        if limited:
            return "rate_limited", min(limited) - now
        return "failed", (min(failed) - now if failed else None)

    def state(self, acc: Account) -> str:
        return _state(acc, self._clock())

    def take_out(self, acc: Account, reason: str, cause: str = "operator") -> bool:
        """Out of rotation, for every process, until `bring_back`. False: it was out already."""
        if acc.disabled:
            return False
        before = _state(acc, self._clock())
        acc.disabled, acc.out_reason, acc.failures = True, reason, 0
        self.shared.disabled(acc.uid, reason)
        self._moved(acc, before, OUT, cause, reason, local=True)
        return True

    def bring_back(self, acc: Account, reason: str, cause: str = "operator") -> bool:
        """Back in rotation, for every process. False: it was not out, or the operator switched it off
        (`manual_off`): only the operator brings that one back."""
        if not acc.disabled or getattr(acc, "manual_off", False):
            return False
        self._back(acc)
        self.shared.enabled(acc.uid)
        self._moved(acc, OUT, ACTIVE, cause, reason, local=True)
        return True

    @staticmethod
    def _back(acc: Account) -> None:
        acc.disabled, acc.out_reason, acc.rest_reason = False, "", ""
        acc.cooldown_until, acc.failures = 0.0, 0

    def _moved(self, acc: Account, before: str, after: str, cause: str, reason: str, local: bool) -> None:
        t = Transition(acc.channel.name, acc.index, acc.uid, before, after, cause, reason, time.time(), local)
        where = "" if local else ", found by another relay process"
        log.warning("account %s: %s -> %s (%s)%s", acc.label, before, after, reason, where)
        for listener in self.on_transition:
            try:
                listener(t)
            except Exception:  # noqa: BLE001 - a listener's bug must not break routing
                log.exception("account transition listener failed")

    @staticmethod
    def target(acc: Account, model: str) -> Target:
        ch = acc.channel
        return Target(
            channel=ch.name, channel_type=ch.type, base_url=ch.base_url, account=acc.index,
            api_key=acc.key, upstream_model=ch.upstream_model(model), extra_headers=ch.headers,
            api_version=ch.api_version, rerank_path=ch.rerank_path, proxy=ch.proxy, reasoning=ch.reasoning,
        )

    def succeeded(self, acc: Account) -> None:
        if acc.failures:  # only a running streak costs anything (a shared write): not every success
            acc.failures = 0
            self.shared.recovered(acc.uid)

    def failed(self, acc: Account, failure: UpstreamFailure) -> None:
        """Fold in a failed attempt. An error body naming a spent quota (error_keywords) turns `failure` into
        kind "quota" here, in place: the caller then fails the request over to the next account."""
        kind = quota_failure(failure, self.error_keywords).kind
        if kind == "auth":
            self.take_out(acc, f"credential refused (HTTP {failure.status})", "auth")
        elif kind == "quota":
            self.take_out(acc, f"{failure.reason} (HTTP {failure.status})", "quota")
        elif kind == "rate_limited":
            wait = failure.retry_after if failure.retry_after is not None else self._retry.cooldown
            rest = min(wait, self._retry.max_cooldown)
            acc.cooldown_until = self._clock() + rest
            acc.rest_reason = "rate_limited"
            self.shared.rested(acc.uid, rest)
        elif kind in ("server", "connect", "timeout"):
            acc.failures += 1
            self.shared.failed(acc.uid)  # the shared streak rests the account for every process
            if acc.failures >= self._retry.failure_threshold:
                acc.failures = 0
                acc.cooldown_until = self._clock() + self._retry.failure_cooldown
                acc.rest_reason = "failed"
                log.warning("account %s failed %d times in a row: resting %.0fs", acc.label,
                            self._retry.failure_threshold, self._retry.failure_cooldown)

    def merge(
        self, acc: Account, disabled: bool | None, rest: float, failures: int | None, reason: str = "",
        rest_reason: str = "",
    ) -> None:
        """Fold in what the other processes found: out of rotation or not (None: unknown, keep ours; an
        account brought back anywhere comes back here too), resting for `rest` more seconds (after
        `rest_reason`), the shared failure streak (None: unknown, keep ours)."""
        if disabled and not acc.disabled:
            before = _state(acc, self._clock())
            acc.disabled, acc.out_reason = True, reason or "out of rotation"
            self._moved(acc, before, OUT, "shared", acc.out_reason, local=False)
        elif disabled is False and acc.disabled and not getattr(acc, "manual_off", False):
            self._back(acc)
            self._moved(acc, OUT, ACTIVE, "shared", "brought back", local=False)
        if rest > 0:
            until = self._clock() + rest
            if until > acc.cooldown_until:
                acc.cooldown_until = until
                acc.rest_reason = rest_reason or acc.rest_reason or "rate_limited"
        if failures is not None:
            acc.failures = failures

    def states(self) -> list[tuple[str, str]]:
        """(channel, state) of every account, for the gauge of accounts per state."""
        now = self._clock()
        return [(a.channel.name, _state(a, now)) for a in self.accounts]

    def out_of_rotation(self) -> list[tuple[Account, str]]:
        now = self._clock()
        out = []
        for a in self.accounts:
            if a.disabled:
                out.append((a, "disabled"))
            elif a.manual_off:
                out.append((a, "off"))
            elif a.cooldown_until > now:
                out.append((a, "cooldown"))
        return out
