"""The token buckets of relay.limits kept in Redis, so every worker process (and every relay host) shares them.

One request is one round trip: a single Lua script (EVALSHA, loaded again on NOSCRIPT) reads the clock
with Redis TIME (so all workers agree on it), refills each of the key's buckets, applies the key's pending
usage correction to its token buckets, checks every bucket and takes from all of them only if all have
room, and answers with the levels the x-ratelimit-* headers need. `settle` costs no round trip: the
correction (estimated - actual tokens) waits in this process until the key's next acquire carries it.

Each bucket is a hash {tokens, ts} under `<prefix>{<key id>}:<limit>`; the braces are a Redis Cluster hash
tag, so one key's buckets share a slot and one script can touch them all. A bucket expires once it would
be full again (its window, or longer while it is in debt): idle keys cost Redis no memory.

When Redis fails or does not answer within `timeout`, the limiter decides alone: `fail_open` admits
(counted in `errors`), otherwise it refuses with limit "unavailable" and retry_after 1. After a failure it
leaves Redis alone for `retry_interval` seconds, so an outage costs each request nothing, not a timeout.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from .config import ConfigError
from .limits import TOKEN_BUCKETS, Decision, Limits, decide, plan

__all__ = ["SCRIPT", "RedisLimiter"]

# KEYS: one per bucket. ARGV: four per bucket: capacity, window (ms), amount to take, correction to apply
# first. Answers {admitted 0|1, refusing bucket (1-based; 0: none), wait in ms, level of each bucket}, the
# floats as strings: Redis would truncate a Lua number to an integer.
SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = #KEYS
local level, cap, win, amt, dirty = {}, {}, {}, {}, {}
local refused, wait, never = 0, 0, 0
for i = 1, n do
  local j = 4 * (i - 1)
  local c, w, a, corr = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4])
  local h = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tok = tonumber(h[1])
  if tok == nil then
    tok = c
  else
    local ts = tonumber(h[2]) or now
    if now > ts then tok = tok + (now - ts) * c / w end
    if tok > c then tok = c end
  end
  if corr ~= 0 then
    tok = tok + corr
    if tok > c then tok = c end
  end
  level[i], cap[i], win[i], amt[i], dirty[i] = tok, c, w, a, corr ~= 0
  if a > c then
    if never == 0 then never = i end
  elseif c > 0 and a - tok > 1e-9 then
    local dt = (a - tok) * w / c
    if refused == 0 or dt > wait then refused, wait = i, dt end
  end
end
if never ~= 0 then refused, wait = never, win[never] end
local out = {refused == 0 and 1 or 0, refused, string.format('%.17g', wait)}
for i = 1, n do
  if refused == 0 then level[i] = level[i] - amt[i] end
  if (refused == 0 and amt[i] > 0) or dirty[i] then
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', level[i]), 'ts', string.format('%.17g', now))
    local ttl = win[i]
    if cap[i] > 0 then ttl = math.max(ttl, (cap[i] - level[i]) * win[i] / cap[i]) end
    redis.call('PEXPIRE', KEYS[i], math.ceil(ttl) + 1)
  end
  out[i + 3] = string.format('%.17g', level[i])
end
return out
"""


log = logging.getLogger("relay.limits")


class RedisLimiter:
    """Same interface as relay.limits.LocalLimiter; `start()` before use, `close()` at shutdown.

    `time_scale` shrinks every window (a minute of refill in 60 * time_scale seconds): for tests only.
    """

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = True,
        timeout: float = 0.05,
        prefix: str = "relay:rl:",
        retry_interval: float = 1.0,
        max_connections: int = 128,
        time_scale: float = 1.0,
    ) -> None:
        self.url = url
        self.fail_open = fail_open
        self.prefix = prefix
        self.retry_interval = retry_interval
        self.time_scale = time_scale
        self.errors = 0  # requests decided without Redis: it failed, timed out, or is being left alone
        self.last_error = ""
        self.up = True  # False from the first failed call until one succeeds again (logged once each way)
        self._down_since = 0.0
        self._pending: dict[str, int] = {}  # key id -> token correction not yet sent
        self._down_until = 0.0
        # 0 retries: a limiter that retries turns a 50 ms timeout into seconds on the request path.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._sha = ""

    def _where(self) -> str:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"

    async def start(self) -> None:
        """Connect and load the script; a Redis that cannot be reached is a config error."""
        try:
            await self._redis.ping()
            self._sha = await self._redis.script_load(SCRIPT)
        except (RedisError, OSError) as e:
            await self.close()
            raise ConfigError(f"limits.redis_url: cannot reach Redis at {self._where()} ({e})") from None

    async def close(self) -> None:
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    def try_acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision | None:
        """Redis must be asked: never answered without a round trip (see `acquire`)."""
        return None if limits.any else Decision(True)

    async def acquire(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision:
        if not limits.any:
            return Decision(True)
        if self._down_until:
            if time.monotonic() < self._down_until:
                return self._unavailable()
            self._down_until = 0.0
        d = await self.ask(key_id, limits, tokens, images)
        if d is None:
            now = time.monotonic()
            self._down_until = now + self.retry_interval
            if self.up:
                self.up, self._down_since = False, now
                log.warning(
                    "rate limits: Redis at %s failed (%s); %s requests of keys with limits until it answers, "
                    "retrying every %.0fs", self._where(), self.last_error,
                    "admitting" if self.fail_open else "refusing", self.retry_interval,
                )
            return self._unavailable()
        if not self.up:
            self.up = True
            log.warning("rate limits: Redis answers again after %.1fs", time.monotonic() - self._down_since)
        return d

    async def ask(self, key_id: str, limits: Limits, tokens: int, images: int = 0) -> Decision | None:
        """Redis's answer, or None when it failed or did not answer in time (`last_error` says why); the
        pending correction then waits for the next call. No backing off here: that is `acquire`'s."""
        specs = plan(limits, tokens, images, 1, self.time_scale)
        correction = self._pending.pop(key_id, 0) if limits.tokens else 0
        keys: list[str] = []
        args: list[int | float] = []
        base = f"{self.prefix}{{{key_id}}}:"
        for name, cap, window, amount in specs:
            keys.append(base + name)
            args += (cap, window * 1000, amount, correction if name in TOKEN_BUCKETS else 0)
        try:
            if not self._sha:  # used without start()
                self._sha = await self._redis.script_load(SCRIPT)
            try:
                res = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
            except NoScriptError:  # Redis restarted or SCRIPT FLUSH: load it again
                self._sha = await self._redis.script_load(SCRIPT)
                res = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            if correction:  # keep it for when Redis answers again
                self._pending[key_id] = self._pending.get(key_id, 0) + correction
            return None
        levels = [float(x) for x in res[3:]]
        return decide(specs, levels, int(res[1]) - 1, float(res[2]) / 1000)

    def settle(self, key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int) -> None:
        """Queue the correction (estimated - actual) for this key's next acquire: no round trip here."""
        delta = estimated_tokens - actual_tokens
        if delta and limits.tokens:
            self._pending[key_id] = self._pending.get(key_id, 0) + delta

    def _unavailable(self) -> Decision:
        self.errors += 1
        if self.fail_open:
            return Decision(True)
        return Decision(False, "unavailable", 1.0, {}, "Rate limits cannot be checked right now; try again.")
