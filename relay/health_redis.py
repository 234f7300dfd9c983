"""Account health and account budgets shared by every relay process through Redis (limits.backend: redis).

`RedisState` is relay.health's SharedState in Redis. Per account (relay.health.account_id) under `prefix`:

    <id>:off    the reason while it is out of rotation (credential refused, quota spent, failed probes);
                deleted when it is brought back (every process then takes it back within `interval`);
                expires after DISABLED_TTL (a day), so a key nobody probes is tried again by traffic
    <id>:rest   "<wall-clock ms until which it rests>:<why>" (why: rate_limited | failed); expires then
    <id>:fails  the failure streak summed over processes; expires STREAK_TTL after its last failure

A change the router reports (disabled, a rest, a soft failure) wakes the background task, which writes it at
once: one script per changed account, pipelined in one round trip; a streak reaching the threshold rests the
account in the same script. Every `interval` seconds (0.25) the same task reads every account with one MGET
and folds the result into the router's copy (`Router.merge`): cost per second is fixed by the number of
accounts, never by the request rate. A success resets the shared streak only when the local copy shows one
running (written with the next read, not at once).

`SharedBudgets` keeps the channels' per-account rpm/tpm in Redis with RedisLimiter's script (one round trip,
only for channels that set them).

Both share one `Outage`: when Redis fails, each process decides with its own copy and its own budget buckets
(never refusing because of Redis), says so once when it starts and once when it ends, and leaves Redis alone
for a second at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .config import RetryConfig
from .health import Change, Outage, Outbox
from .limits import Decision, Limits, LocalLimiter
from .limits_redis import RedisLimiter
from .router import Account, Router

__all__ = ["DISABLED_TTL", "LEADER", "STREAK_TTL", "WRITE", "ProbeLeader", "RedisState", "SharedBudgets"]

log = logging.getLogger("relay.shared")

DISABLED_TTL = 86_400  # seconds
STREAK_TTL = 600  # seconds after the last failure

# KEYS: off, rest, fails. ARGV: 1 out | 2 back | 0 neither, its ttl (s), rest until (wall ms; 0: none),
# reset 0|1, failures to add, streak ttl (ms), threshold, rest until when the streak reaches it (wall ms),
# the reason it is out. A rest only ever lengthens: the longest one any process found wins.
WRITE = """
local function rest(t, why)
  local cur = tonumber(string.match(redis.call('GET', KEYS[2]) or '', '^(%d+)')) or 0
  if tonumber(t) > cur then
    redis.call('SET', KEYS[2], t .. ':' .. why, 'PXAT', t)
  end
end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[9], 'EX', ARGV[2]) end
if ARGV[1] == '2' then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
if ARGV[3] ~= '0' then rest(ARGV[3], 'rate_limited') end
if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
local n = tonumber(ARGV[5])
if n > 0 then
  local c = redis.call('INCRBY', KEYS[3], n)
  if c >= tonumber(ARGV[7]) then
    redis.call('DEL', KEYS[3])
    rest(ARGV[8], 'failed')
  else
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  end
end
return 0
"""

_ERRORS = (RedisError, OSError, TimeoutError)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class RedisState:
    """The router's health copy kept in step with every other process; `start()` before serving."""

    def __init__(
        self, router: Router, url: str, *, retry: RetryConfig, outage: Outage, prefix: str = "relay:acct:",
        interval: float = 0.25, timeout: float = 0.5,
    ) -> None:
        self.outage = outage
        self.interval = interval
        self._router = router
        self._retry = retry
        self._prefix = prefix
        self._accounts: dict[str, list[Account]] = {}  # one key in two channels is one account
        self._keys: list[str] = []
        self._generation = -1
        self._index()
        self._outbox = Outbox()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One task uses it, one call at a time; no retries: the loop itself comes back in `interval`.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=2, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self._redis = aioredis.Redis(connection_pool=pool)

    # -- what the router reports (sync: the write happens in the background task, at once) --------------

    def disabled(self, uid: str, reason: str = "") -> None:
        self._outbox.disabled(uid, reason)
        self._wake.set()

    def enabled(self, uid: str) -> None:
        self._outbox.enabled(uid)
        self._wake.set()

    def rested(self, uid: str, seconds: float) -> None:
        self._outbox.rested(uid, time.time() + seconds)
        self._wake.set()

    def failed(self, uid: str) -> None:
        self._outbox.failed(uid)
        self._wake.set()

    def recovered(self, uid: str) -> None:
        self._outbox.recovered(uid)  # with the next read: a reset is not urgent

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read what the other processes know before serving, then keep reading in the background."""
        await self.sync(read=True)
        self._task = asyncio.create_task(self._run(), name="relay-shared-state")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._outbox and not self.outage.skip():
            await self.sync(read=False)  # what this process found last still reaches the others
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_read = loop.time() + self.interval
        while True:
            wait = next_read - loop.time()
            if wait > 0 and not self._outbox:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            self._wake.clear()
            if self.outage.skip():
                await asyncio.sleep(self.interval)
                continue
            read = loop.time() >= next_read
            if read:
                next_read = loop.time() + self.interval
            try:
                await self.sync(read)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad value in Redis
                log.exception("shared account state: sync failed")

    def _index(self) -> None:
        """The accounts to read, again after each router reload (channels changed at run time)."""
        self._accounts = {}
        for acc in self._router.accounts:
            self._accounts.setdefault(acc.uid, []).append(acc)
        self._keys = [f"{self._prefix}{uid}:{part}" for uid in self._accounts for part in ("off", "rest", "fails")]
        self._generation = self._router.generation

    # -- one round trip ------------------------------------------------------------------------------------

    async def sync(self, read: bool) -> bool:
        """Write the pending changes and (when `read`) read every account, in one pipelined round trip."""
        if self._generation != self._router.generation:
            self._index()
        changes = self._outbox.take()
        if not changes and not read:
            return True
        pipe = self._redis.pipeline(transaction=False)
        now = time.time()
        for uid, c in changes.items():
            pipe.eval(WRITE, 3, *self._three(uid), *self._args(c, now))
        if read and self._keys:
            pipe.mget(self._keys)
        try:
            res = await pipe.execute()
        except _ERRORS as e:
            self._outbox.put_back(changes, time.time())
            self.outage.failed(_error(e))
            return False
        self.outage.ok()
        if read and self._keys and self._generation == self._router.generation:  # else: read again next time
            self._apply(res[-1], time.time())
        return True

    def _three(self, uid: str) -> tuple[str, str, str]:
        p = self._prefix + uid
        return p + ":off", p + ":rest", p + ":fails"

    def _args(self, c: Change, now: float) -> tuple[int | str, ...]:
        r = self._retry
        return (
            1 if c.disabled else 2 if c.enabled else 0, DISABLED_TTL, int(c.rest_until * 1000), int(c.reset),
            c.failures, STREAK_TTL * 1000, r.failure_threshold, int((now + r.failure_cooldown) * 1000),
            c.reason or "out of rotation",
        )

    def _apply(self, values: list[bytes | None], wall: float) -> None:
        for i, (uid, accounts) in enumerate(self._accounts.items()):
            off, rest, fails = values[3 * i : 3 * i + 3]
            try:
                until, _, why = (rest or b"").decode().partition(":")
                remaining = int(until) / 1000 - wall if until else 0.0
                # a change of ours still on its way: the shared state does not hold it yet
                pending = uid in self._outbox
                streak = None if pending else int(fails or 0)
            except (ValueError, UnicodeDecodeError):
                continue  # not written by a relay: ignore it
            reason = off.decode(errors="replace") if off is not None else ""
            for acc in accounts:
                self._router.merge(
                    acc, None if pending else off is not None, remaining, streak, reason, why,
                )


class SharedBudgets:
    """relay.limits.Limiter for account budgets: Redis decides (one round trip); while it fails, this
    process's own buckets do, so a request is never refused because Redis is away."""

    def __init__(self, redis: RedisLimiter, outage: Outage) -> None:
        self.outage = outage
        self._redis = redis
        self._local = LocalLimiter()

    async def start(self) -> None:
        await self._redis.start()

    async def close(self) -> None:
        await self._redis.close()

    def try_acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision | None:
        if not limits.any:
            return Decision(True)
        if self.outage.skip():  # Redis is away: decided here, at once
            return self._local.try_acquire(key_id, limits, tokens, images)
        return None

    async def acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision:
        d = await self._redis.ask(key_id, limits, tokens, images)
        if d is None:
            self.outage.failed(self._redis.last_error)
            return self._local.try_acquire(key_id, limits, tokens, images)
        self.outage.ok()
        return d

    def settle(self, key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int) -> None:
        self._redis.settle(key_id, limits, estimated_tokens, actual_tokens)
        self._local.settle(key_id, limits, estimated_tokens, actual_tokens)


# KEYS: the leader key. ARGV: holder, ttl (ms). 1: `holder` leads (renewed or taken), 0: another one does.
LEADER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class ProbeLeader:
    """One process probes at a time: `SET <prefix>probe-leader <holder> NX PX ttl`, renewed by the holder on
    every call (the prober calls at least every second, `ttl` is 3 s or more); when the holder stops (or
    dies) the key lapses and the next process to ask takes over. While Redis fails every process probes
    on its own (as every process then decides on its own view): probes are cheap, a blind relay is not."""

    def __init__(self, url: str, key: str, holder: str, ttl: float, timeout: float = 0.5) -> None:
        self.key, self.holder, self.ttl_ms = key, holder, max(1, int(ttl * 1000))
        self.leading: bool | None = False  # None: Redis failed at the last call
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=1, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self._redis = aioredis.Redis(connection_pool=pool)

    async def __call__(self) -> bool:
        try:
            leading = bool(await self._redis.eval(LEADER, 1, self.key, self.holder, self.ttl_ms))
        except _ERRORS as e:
            if self.leading is not None:
                log.warning("probe leader lock unavailable (%s): this process probes on its own", _error(e))
            self.leading = None
            return True
        if leading != self.leading:
            log.info("health probes: this process %s", "leads" if leading else "leaves them to another process")
        self.leading = leading
        return leading

    async def close(self) -> None:
        with contextlib.suppress(*_ERRORS):
            await self._redis.eval(_RELEASE, 1, self.key, self.holder)  # the next process takes over at once
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()
