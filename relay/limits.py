"""Per-key rate limits as token buckets: RPM, RPD, TPM, TPD and IPM (images per minute). Pure: no I/O.

Each set limit is one bucket holding at most `limit` units (the burst) and refilling continuously at
limit / window (60 s or 86,400 s). A request takes 1 from the request buckets, its token estimate from the
token buckets and its image count from the image bucket, and only if every bucket has room: it is admitted
whole or not at all, and a refusal takes nothing. When the request ends, `settle` gives back what the
estimate overstated or takes what it understated (a bucket may go below zero: that debt delays the key's
next requests), so over time a key is admitted exactly its limits, however rough the estimates.

Buckets refill lazily from a clock read at each call: no timer or task per key, O(1) per request, memory
bounded by the number of keys that have limits. The clock is injected, so tests run without sleeping.

`LocalLimiter` keeps the buckets in this process (with N worker processes each gets 1/N of every limit);
`relay.limits_redis.RedisLimiter` keeps them in Redis, shared by every worker, with the same interface and
the same arithmetic (this module's `plan` and `decide` serve both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import RateLimited
from .types import KeyRecord

__all__ = ["NAMES", "TOKEN_BUCKETS", "WINDOWS", "Decision", "Limiter", "Limits", "LocalLimiter", "decide", "format_duration", "plan"]

NAMES = ("rpm", "rpd", "tpm", "tpd", "ipm")
WINDOWS = {"rpm": 60.0, "rpd": 86_400.0, "tpm": 60.0, "tpd": 86_400.0, "ipm": 60.0}
TOKEN_BUCKETS = frozenset({"tpm", "tpd"})
_UNIT = {"rpm": "requests", "rpd": "requests", "tpm": "tokens", "tpd": "tokens", "ipm": "images"}
_LABEL = {
    "rpm": "requests per min (RPM)", "rpd": "requests per day (RPD)", "tpm": "tokens per min (TPM)",
    "tpd": "tokens per day (TPD)", "ipm": "images per min (IPM)",
}
# Float slack when comparing a bucket's level with an amount: refills computed from clock differences
# carry rounding of ~1e-13, which must not turn an exact fit into a refusal.
EPS = 1e-9

# One bucket as one request sees it: (name, capacity, window in seconds, amount this request takes).
Spec = tuple[str, int, float, int]


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; None is no limit, 0 admits nothing that needs the unit."""

    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    ipm: int | None = None

    @classmethod
    def of(cls, key: KeyRecord) -> Limits:
        return cls(key.rpm, key.rpd, key.tpm, key.tpd, key.ipm)

    @property
    def any(self) -> bool:
        return not (self.rpm is None and self.rpd is None and self.tpm is None and self.tpd is None
                    and self.ipm is None)

    @property
    def tokens(self) -> bool:
        """Whether a token bucket is set, so `settle` has anything to correct."""
        return self.tpm is not None or self.tpd is not None


@dataclass(slots=True)
class Decision:
    """The answer to one acquire.

    `limit` names the bucket that refused ("rpm" | "rpd" | "tpm" | "tpd" | "ipm", or "unavailable" when the
    shared store could not be asked and the limiter fails closed). `retry_after` is the wait in seconds
    until the request would fit. `too_large`: the request needs more than the bucket's whole capacity, so
    it can never fit (retry_after is then that bucket's window). `headers` are OpenAI's x-ratelimit-*.
    """

    allowed: bool
    limit: str | None = None
    retry_after: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""
    too_large: bool = False

    def error(self) -> RateLimited:
        """The 429 to answer a refusal with: OpenAI's message, x-ratelimit-* and retry-after headers."""
        headers = dict(self.headers)
        headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        err = RateLimited(self.message or "Rate limit reached.", headers=headers)
        if self.limit in ("tpm", "tpd"):
            err.type = "tokens"
        if self.too_large:
            err.should_retry = False  # retrying cannot help: the request itself must shrink
        return err


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's reset headers (Go's time.Duration) write it, to the millisecond:
    "0s", "120ms", "1s", "1.5s", "6m0s", "1m30.5s", "1h2m3s"."""
    ms = int(seconds * 1000 + 0.5) if seconds > 0 else 0
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    sec = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def plan(limits: Limits, tokens: int, images: int, share: int = 1, time_scale: float = 1.0) -> list[Spec]:
    """The buckets one request must pass, in NAMES order. `share` divides every limit (rounding up);
    `time_scale` shrinks the windows (tests only: a minute of refill in `60 * time_scale` seconds)."""
    out: list[Spec] = []
    for name in NAMES:
        limit = getattr(limits, name)
        if limit is None:
            continue
        cap = max(0, -(-limit // share)) if share > 1 else max(0, limit)
        amount = 1 if name[0] == "r" else tokens if name[0] == "t" else images
        out.append((name, cap, WINDOWS[name] * time_scale, max(0, amount)))
    return out


def _refusal(specs: list[Spec], levels: list[float]) -> tuple[int, float]:
    """Which bucket refuses (-1: none) and the wait until the request fits. A bucket the request can never
    fit (amount over capacity) wins, with its window as the wait; otherwise the longest wait wins."""
    index, wait = -1, 0.0
    for i, (_, cap, window, amount) in enumerate(specs):
        if amount > cap:
            return i, window
        if cap == 0:  # nothing asked of an empty bucket
            continue
        short = amount - levels[i]
        if short > EPS:
            w = short * window / cap
            if index < 0 or w > wait:
                index, wait = i, w
    return index, wait


def decide(specs: list[Spec], levels: list[float], refused: int, wait: float) -> Decision:
    """Build the Decision from the buckets' levels (after taking, when admitted)."""
    headers: dict[str, str] = {}
    req = tok = False  # the first request bucket (rpm, else rpd) and token bucket (tpm, else tpd) speak
    for (name, cap, window, _), level in zip(specs, levels):
        kind = name[0]
        if kind == "r" and not req:
            req, unit = True, "requests"
        elif kind == "t" and not tok:
            tok, unit = True, "tokens"
        else:
            continue
        headers["x-ratelimit-limit-" + unit] = str(cap)
        headers["x-ratelimit-remaining-" + unit] = str(int(level + EPS)) if level > 0 else "0"
        headers["x-ratelimit-reset-" + unit] = format_duration((cap - level) * window / cap) if cap else "0s"
    if refused < 0:
        return Decision(True, None, 0.0, headers)
    name, cap, _, amount = specs[refused]
    if amount > cap:
        message = (f"Request too large on {_LABEL[name]}: Limit {cap}, Requested {amount}. The request must "
                   f"need fewer {_UNIT[name]} to run.")
        return Decision(False, name, wait, headers, message, True)
    used = max(0, math.ceil(cap - levels[refused] - EPS))
    message = (f"Rate limit reached on {_LABEL[name]}: Limit {cap}, Used {used}, Requested {amount}. "
               f"Please try again in {format_duration(wait)}.")
    return Decision(False, name, wait, headers, message)


class _Bucket:
    __slots__ = ("level", "ts")

    def __init__(self, level: float, ts: float) -> None:
        self.level = level
        self.ts = ts

    def refill(self, now: float, cap: int, window: float) -> float:
        if now > self.ts:
            self.level += (now - self.ts) * cap / window
            self.ts = now
        if self.level > cap:  # full (or the limit was lowered)
            self.level = cap
        return self.level


class _Shape:
    """What a set of limits asks of every request, worked out once: buckets in NAMES order as (name,
    capacity, window, kind), and which bucket speaks for the request and token headers."""

    __slots__ = ("_speakers", "buckets")

    def __init__(self, limits: Limits, share: int) -> None:
        self.buckets = tuple(
            (name, cap, window, name[0]) for name, cap, window, _ in plan(limits, 0, 0, share)
        )
        speakers = []
        for unit, kind in (("requests", "r"), ("tokens", "t")):
            for i, (_, cap, window, k) in enumerate(self.buckets):
                if k == kind:
                    speakers.append((i, cap, window, str(cap), "x-ratelimit-limit-" + unit,
                                     "x-ratelimit-remaining-" + unit, "x-ratelimit-reset-" + unit))
                    break
        self._speakers = tuple(speakers)

    def headers(self, levels: list[float]) -> dict[str, str]:
        h: dict[str, str] = {}
        for i, cap, window, cap_text, limit_name, remaining_name, reset_name in self._speakers:
            level = levels[i]
            h[limit_name] = cap_text
            h[remaining_name] = str(int(level + EPS)) if level > 0 else "0"
            h[reset_name] = format_duration((cap - level) * window / cap) if cap else "0s"
        return h


class Limiter(Protocol):
    """What the request path needs of a limiter; LocalLimiter and limits_redis.RedisLimiter provide it.

    `try_acquire` answers at once when the limiter can (in-process buckets) and returns None when it has to
    ask a shared store, which `acquire` then does. The request path calls `acquire` only on None: an extra
    coroutine per request measurably costs more than all the bucket arithmetic.
    """

    def try_acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision | None: ...

    async def acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision: ...

    def settle(self, key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int) -> None: ...


class LocalLimiter:
    """Token buckets in this process. With `share` N (N worker processes each with its own limiter), every
    limit is divided by N, rounding up, so the workers together admit at most the limit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, share: int = 1) -> None:
        self._clock = clock
        self._share = max(1, share)
        self._keys: dict[str, dict[str, _Bucket]] = {}
        self._shapes: dict[Limits, _Shape] = {}  # bounded by the distinct limit sets in use

    def __len__(self) -> int:
        return len(self._keys)

    async def acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision:
        return self.try_acquire(key_id, limits, tokens, images)

    def try_acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision:
        """`acquire` without the coroutine: nothing here waits."""
        if not limits.any:
            return Decision(True)
        shape = self._shapes.get(limits)
        if shape is None:
            shape = self._shapes[limits] = _Shape(limits, self._share)
        now = self._clock()
        buckets = self._keys.get(key_id)
        if buckets is None:
            buckets = self._keys[key_id] = {}
        levels: list[float] = []
        fits = True
        for name, cap, window, kind in shape.buckets:
            b = buckets.get(name)
            if b is None:
                b = buckets[name] = _Bucket(float(cap), now)
            level = b.refill(now, cap, window)
            levels.append(level)
            amount = 1 if kind == "r" else tokens if kind == "t" else images
            if amount > cap or amount - level > EPS:
                fits = False
        if not fits:  # the rare path: say which bucket refused, how long to wait, and why
            specs = plan(limits, tokens, images, self._share)
            refused, wait = _refusal(specs, levels)
            return decide(specs, levels, refused, wait)
        for i, (name, _, _, kind) in enumerate(shape.buckets):
            amount = 1 if kind == "r" else tokens if kind == "t" else images
            if amount:
                b = buckets[name]
                b.level -= amount
                levels[i] = b.level
        return Decision(True, None, 0.0, shape.headers(levels))

    def settle(self, key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the token buckets by (estimated - actual): a refund up to capacity, or a debt."""
        delta = estimated_tokens - actual_tokens
        if not delta or not limits.tokens:
            return
        buckets = self._keys.get(key_id)
        if buckets is None:
            return
        now = self._clock()
        for name in ("tpm", "tpd"):
            limit = getattr(limits, name)
            if limit is not None and (b := buckets.get(name)) is not None:
                cap = max(0, -(-limit // self._share))
                b.level = min(float(cap), b.refill(now, cap, WINDOWS[name]) + delta)
