"""Account transitions POSTed to `health.webhook_url`: JSON {"channel", "account", "from", "to", "reason", "at"}.

Never a key (the account is its index in the channel). `put` never waits: a bounded queue (100) between
the router and one sender task; when it is full the transition is dropped and counted. Each POST has a short
deadline (5 s) and is not retried; a failure is logged and counted (`relay_health_webhook_total{result}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import orjson

from .health import Transition
from .types import UpstreamRequest
from .upstream import Upstream

__all__ = ["Webhook"]

log = logging.getLogger("relay.health")

QUEUE = 100
TIMEOUT = 5.0  # seconds


class Webhook:
    def __init__(self, upstream: Upstream, url: str, timeout: float = TIMEOUT, queue: int = QUEUE) -> None:
        self.url = url
        self.timeout = timeout
        self.counts: Counter[str] = Counter()  # sent | failed | dropped
        self._upstream = upstream
        self._queue: asyncio.Queue[Transition] = asyncio.Queue(queue)
        self._task: asyncio.Task[None] | None = None

    def put(self, t: Transition) -> None:
        if not t.local:  # the process that found it tells the hook: one POST per transition
            return
        try:
            self._queue.put_nowait(t)
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            log.warning("health webhook: queue full, transition of %s#%d dropped", t.channel, t.account)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-health-webhook")

    async def close(self, grace: float = 2.0) -> None:
        """Send what is queued (for up to `grace` seconds), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            t = await self._queue.get()
            try:
                await self._send(t)
            finally:
                self._queue.task_done()

    async def _send(self, t: Transition) -> None:
        ureq = UpstreamRequest(
            "POST", self.url, {"Content-Type": "application/json"}, orjson.dumps(t.webhook_body()),
        )
        try:
            status, _, _ = await self._upstream.call(ureq, self.timeout)
        except Exception as e:  # noqa: BLE001 - UpstreamFailure or a bad URL: counted, never raised
            self.counts["failed"] += 1
            log.warning("health webhook: POST failed (%s)", getattr(e, "reason", type(e).__name__))
            return
        if status >= 300:
            self.counts["failed"] += 1
            log.warning("health webhook: answered HTTP %d", status)
        else:
            self.counts["sent"] += 1
