"""Active health checks: every account of every channel probed on a schedule (the requests: relay.probes).

Each account is probed every `health.interval` seconds, its first probe at a random point of the first
interval, so one round's probes are spread over the interval rather than sent at once; at most
`health.concurrency` (4) are in flight. An account out of rotation is probed every interval / 4 (never
more often than the scheduler's tick), an account resting after an upstream 429 not at all until its rest
is over (a probe would only spend its rate limit). `router.accounts` is read afresh at every tick, so
channels replaced at run time are probed from then on.

What a probe finds moves the account (relay.router): a refused credential or a spent quota takes it out at
once, `failures_to_disable` failed probes in a row (5xx, connect errors, timeouts; no client traffic needed)
take it out, `successes_to_enable` passing probes in a row bring an out account back. A probe the upstream
refuses as a bad request (an unknown test_model) or rate limits moves nothing. The last result and the
streaks of every account are kept here, in memory, for /admin/health; each result also goes to `on_result`.

With `leader` (limits.backend: redis, relay.health_redis.ProbeLeader) only the process holding the lock
probes, and its findings reach the others through the shared account state; without it each process
probes on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .config import ChannelConfig
from .config_health import HealthConfig
from .errors import UpstreamFailure
from .health import ProbeResult
from .probes import probe_failure, probe_request, probe_result
from .router import Account, Router
from .upstream import Upstream

__all__ = ["AccountProbes", "Prober"]

log = logging.getLogger("relay.prober")

# The scheduler wakes at least this often (seconds): the leader lock is renewed at each tick.
MAX_TICK = 1.0


@dataclass(slots=True)
class AccountProbes:
    """What the probes found about one account."""

    last: ProbeResult | None = None
    ok_streak: int = 0  # passing probes in a row
    fail_streak: int = 0  # failed probes in a row (5xx, connect, timeout)
    back_streak: int = 0  # passing probes in a row while out of rotation
    due: float = 0.0  # monotonic time of its next probe
    busy: bool = False


def _key(acc: Account) -> tuple[str, int, str]:
    return acc.channel.name, acc.index, acc.uid


class Prober:
    def __init__(
        self, router: Router, upstream: Upstream, cfg: HealthConfig,
        on_result: Callable[[ProbeResult], None] | None = None, *,
        leader: Callable[[], Awaitable[bool]] | None = None, clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self.on_result = on_result
        self.probes_sent = 0
        self.router = router
        self.probing = False  # this process sends the scheduled probes (it holds the leader lock, or needs none)
        self._router = router
        self._upstream = upstream
        self._leader = leader
        self._clock = clock
        self._rng = rng
        self._keywords = tuple(k.encode() for k in cfg.error_keywords)
        self._records: dict[tuple[str, int, str], AccountProbes] = {}
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._inflight: set[asyncio.Task[ProbeResult]] = set()
        self._task: asyncio.Task[None] | None = None
        self.tick = min(MAX_TICK, cfg.interval / 4)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-prober")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.probing = self._leader is None or await self._leader()
                if self.probing:
                    self._launch_due()
                else:
                    self._records_for(self._router.accounts)  # keep the schedule, probe nothing
            except Exception:  # noqa: BLE001 - the scheduler must outlive one bad round
                log.exception("health probes: scheduling failed")
            await asyncio.sleep(self.tick)

    def _records_for(self, accounts: list[Account]) -> list[tuple[Account, AccountProbes]]:
        now = self._clock()
        out = []
        seen = set()
        for acc in accounts:
            k = _key(acc)
            seen.add(k)
            rec = self._records.get(k)
            if rec is None:
                rec = self._records[k] = AccountProbes(due=now + self._rng() * self.cfg.interval)
            out.append((acc, rec))
        for k in [k for k in self._records if k not in seen]:  # gone from the configuration
            del self._records[k]
        return out

    def _launch_due(self) -> None:
        now = self._clock()
        for acc, rec in self._records_for(self._router.accounts):
            if rec.busy or rec.due > now or getattr(acc, "manual_off", False):
                continue
            if acc.rest_reason == "rate_limited" and acc.cooldown_until > now:
                continue
            rec.busy = True
            task = asyncio.create_task(self._probe_bounded(acc, rec), name="relay-probe")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _probe_bounded(self, acc: Account, rec: AccountProbes) -> ProbeResult:
        try:
            async with self._sem:
                return await self.probe(acc)
        finally:
            rec.busy = False
            rec.due = self._clock() + self._gap(acc)

    def _gap(self, acc: Account) -> float:
        interval = self.cfg.interval
        return max(self.tick, interval / 4) if acc.disabled else interval

    # -- one probe -----------------------------------------------------------------------------------------

    async def probe(self, acc: Account) -> ProbeResult:
        """Probe `acc` now and fold the answer into its state."""
        ch: ChannelConfig = acc.channel
        model = ch.test_model or ch.models[0]
        ureq = probe_request(ch, self._router.target(acc, model))
        started = time.monotonic()
        status: int | None = None
        failure: UpstreamFailure | None
        self.probes_sent += 1
        try:
            status, headers, body = await self._upstream.call(ureq, self.cfg.timeout)
            failure = probe_failure(ch.type, status, headers, body, self._keywords)
        except UpstreamFailure as f:
            failure = f
        result = probe_result(ch, acc.index, acc.uid, status, failure, time.monotonic() - started)
        self._apply(acc, result, failure)
        return result

    async def probe_channel(self, name: str) -> list[tuple[Account, ProbeResult]]:
        """Probe every account of channel `name` now (at most `concurrency` at once)."""
        accounts = [a for a in self._router.accounts if a.channel.name == name]

        async def one(acc: Account) -> tuple[Account, ProbeResult]:
            async with self._sem:
                return acc, await self.probe(acc)

        return list(await asyncio.gather(*(one(a) for a in accounts)))

    def _apply(self, acc: Account, result: ProbeResult, failure: UpstreamFailure | None) -> None:
        rec = self._records.get(_key(acc))
        if rec is None:
            rec = self._records[_key(acc)] = AccountProbes(due=self._clock() + self._gap(acc))
        rec.last = result
        cfg = self.cfg
        if failure is None:
            rec.ok_streak += 1
            rec.fail_streak = 0
            if acc.disabled:
                rec.back_streak += 1
                if rec.back_streak >= cfg.successes_to_enable and self._router.bring_back(
                    acc, f"{rec.back_streak} probes in a row passed", "probes_passed"
                ):
                    rec.back_streak = 0
            else:
                rec.back_streak = 0
                self._router.succeeded(acc)
        else:
            rec.ok_streak = rec.back_streak = 0
            if result.kind in ("auth", "quota"):
                self._router.failed(acc, failure)  # out at once
            elif result.kind == "rate_limited":
                self._router.failed(acc, failure)  # rests until its Retry-After, like traffic
            elif result.kind in ("server", "connect", "timeout"):
                rec.fail_streak += 1
                if rec.fail_streak >= cfg.failures_to_disable:
                    self._router.take_out(
                        acc, f"{rec.fail_streak} probes in a row failed ({result.error})", "probes_failed"
                    )
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - a consumer's bug must not stop the probes
                log.exception("probe result consumer failed")

    # -- the view ------------------------------------------------------------------------------------------

    def record(self, acc: Account) -> AccountProbes | None:
        return self._records.get(_key(acc))

    def view(self) -> list[dict[str, object]]:
        """Every channel and account: state, reason, last probe, streaks (for GET /admin/health)."""
        channels: dict[str, list[dict[str, object]]] = {}
        for acc in self._router.accounts:
            rec = self._records.get(_key(acc))
            last = rec.last if rec is not None else None
            state = self._router.state(acc)
            reason = acc.out_reason if state == "out" else acc.rest_reason if state == "resting" else ""
            channels.setdefault(acc.channel.name, []).append({
                "index": acc.index, "state": state, "reason": reason,
                "last_probe": None if last is None else {
                    "ok": last.ok, "kind": last.kind, "status": last.status, "latency_ms": last.latency_ms,
                    "error": last.error, "at": last.at, "model": last.model,
                },
                "ok_streak": rec.ok_streak if rec else 0, "fail_streak": rec.fail_streak if rec else 0,
                "traffic_failures": acc.failures,
            })
        return [{"name": name, "accounts": accs} for name, accs in channels.items()]
