"""Deadlines of upstream calls, kept by one timer for all of them.

aiohttp's own timeouts arm a timer per call and, for a stream's idle deadline, cancel and re-arm one for
every chunk: with thousands of calls in flight that is a good share of the relay's CPU. Here a deadline is
a number in a bucket of `resolution` seconds: arming it is a set insertion, extending it (a stream's next
chunk) an assignment. One timer, running only while deadlines are armed, fires those past their time once
per `resolution`; a deadline fires up to that much late, which for deadlines of seconds or minutes is
nothing.

`within(seconds)` bounds the awaits of a block (the call's task is cancelled and the block raises
TimeoutError, as with asyncio.timeout); `arm(seconds, fire)` calls `fire` instead (a stream's idle
deadline closes its upstream response, so the read under way fails as a cut stream).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType

__all__ = ["Deadline", "Deadlines"]


class Deadline:
    __slots__ = ("_owner", "at", "bucket", "fire")

    def __init__(self, owner: Deadlines, at: float, fire: Callable[[], object]) -> None:
        self._owner = owner
        self.at = at
        self.fire: Callable[[], object] | None = fire
        self.bucket = -1

    def extend(self, seconds: float) -> None:
        """The deadline is now `seconds` from the last tick (a few ms ago at most)."""
        self.at = self._owner.now + seconds

    def disarm(self) -> None:
        self._owner.disarm(self)


class Deadlines:
    def __init__(self, resolution: float = 0.05) -> None:
        self.resolution = resolution
        self.now = 0.0  # the loop's time at the last tick (or arm)
        self._buckets: dict[int, set[Deadline]] = {}
        self._armed = 0
        self._swept = -1  # every bucket up to this one has fired
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self, seconds: float, fire: Callable[[], object]) -> Deadline:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self.now = loop.time()
        d = Deadline(self, self.now + seconds, fire)
        self._file(d)
        self._armed += 1
        if self._timer is None:
            self._swept = self._index(self.now) - 1
            self._timer = loop.call_later(self.resolution, self._tick)
        return d

    def disarm(self, d: Deadline) -> None:
        if d.fire is None:
            return  # fired or disarmed already
        d.fire = None
        self._armed -= 1
        bucket = self._buckets.get(d.bucket)
        if bucket is not None:
            bucket.discard(d)
            if not bucket:
                del self._buckets[d.bucket]

    def within(self, seconds: float) -> Within:
        return Within(self, seconds)

    # -- the timer ----------------------------------------------------------------------------------------

    def _index(self, at: float) -> int:
        return math.floor(at / self.resolution)

    def _file(self, d: Deadline) -> None:
        d.bucket = max(self._index(d.at), self._swept + 1)
        self._buckets.setdefault(d.bucket, set()).add(d)

    def _tick(self) -> None:
        assert self._loop is not None
        self.now = now = self._loop.time()
        last = self._index(now)
        for i in range(self._swept + 1, last + 1):
            bucket = self._buckets.pop(i, None)
            if bucket is None:
                continue
            self._swept = i
            for d in bucket:
                if d.at > now:  # extended since it was filed: into its bucket now
                    self._file(d)
                    continue
                fire, d.fire = d.fire, None
                self._armed -= 1
                if fire is not None:
                    fire()
        self._swept = last
        self._timer = self._loop.call_later(self.resolution, self._tick) if self._armed else None


class Within:
    """The awaits of a `with` block bounded in time: past the deadline the task is cancelled and the block
    raises TimeoutError (a cancellation from anyone else stays a cancellation)."""

    __slots__ = ("_cancelling", "_deadline", "_expired", "_owner", "_seconds", "_task")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner, self._seconds = owner, seconds
        self._expired = False

    def __enter__(self) -> Within:
        task = asyncio.current_task()
        assert task is not None, "within() needs a task"
        self._task, self._cancelling = task, task.cancelling()
        self._deadline = self._owner.arm(self._seconds, self._expire)
        return self

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self._owner.disarm(self._deadline)
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
