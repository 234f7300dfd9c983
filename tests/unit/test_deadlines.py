"""One timer for every upstream deadline: they fire on time (within the resolution), extended ones later,
disarmed ones never, and a block bounded by `within` raises TimeoutError, not CancelledError."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.deadlines import Deadlines


async def test_fires_once_past_its_time_and_not_before() -> None:
    dl = Deadlines(0.02)
    fired: list[float] = []
    started = time.monotonic()
    dl.arm(0.1, lambda: fired.append(time.monotonic() - started))
    await asyncio.sleep(0.07)
    assert fired == []
    await asyncio.sleep(0.1)
    assert len(fired) == 1 and 0.1 <= fired[0] < 0.16


async def test_an_extended_deadline_waits_and_a_disarmed_one_never_fires() -> None:
    dl = Deadlines(0.02)
    fired: list[str] = []
    kept = dl.arm(0.1, lambda: fired.append("kept"))
    gone = dl.arm(0.05, lambda: fired.append("gone"))
    gone.disarm()
    for _ in range(5):  # a chunk every 60 ms, each within the 100 ms idle deadline
        await asyncio.sleep(0.06)
        kept.extend(0.1)
    assert fired == []
    await asyncio.sleep(0.2)
    assert fired == ["kept"]
    assert dl._armed == 0 and dl._timer is None  # noqa: SLF001 - nothing armed: no timer either


async def test_within_raises_timeout_error_and_leaves_other_cancellations_alone() -> None:
    dl = Deadlines(0.02)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with dl.within(0.05):
            await asyncio.sleep(5)
    assert time.monotonic() - started < 0.2
    with dl.within(0.05):  # done in time: nothing happens
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)

    async def cancelled_from_outside() -> None:
        with dl.within(5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(cancelled_from_outside())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dl._armed == 0  # noqa: SLF001
