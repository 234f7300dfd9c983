"""The one way the relay's background tasks (key poller, balance keeper, binding writer) are stopped."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["stop"]


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended (its cancellation swallowed); None is nothing to stop."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
