"""Which upstream account made each Responses API response, so follow-ups reach it. No content, ids only.

A response id (`resp_...`) exists only on the upstream account that created it: a follow-up that names it
(`previous_response_id`, GET/DELETE /v1/responses/{id}, cancel, input_items) must go to that account, and
only the client key that created it may touch it. The binding (response id -> account uid, key id) is kept
in a backend shared by every process: the store (SQLite or PostgreSQL), or Redis with limits.backend redis.
It expires `ttl` seconds after it was made (30 days by default).

`bind` costs the request nothing: the binding is known to this process at once and written by one
background task within a few milliseconds (a client's follow-up comes after it read the answer). `lookup`
answers from this process's copy when it can, else with one backend round trip: only requests that name an
earlier response pay it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Protocol

from .tasks import stop

__all__ = ["BindingBackend", "ResponseBindings"]

log = logging.getLogger("relay.bindings")

# Bindings this process remembers without asking the backend (least recently used dropped first).
_LOCAL_MAX = 50_000
# Bindings waiting to be written; past this the oldest are written first and new ones wait in line.
_PENDING_MAX = 100_000


class BindingBackend(Protocol):
    async def bind_response(self, response_id: str, account: str, key_id: str, ttl: float) -> None: ...

    async def response_binding(self, response_id: str) -> tuple[str, str] | None: ...

    async def unbind_response(self, response_id: str) -> None: ...


class ResponseBindings:
    def __init__(self, backend: BindingBackend, ttl: float) -> None:
        self._backend = backend
        self.ttl = ttl
        self._local: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._pending: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.errors = 0

    def bind(self, response_id: str, account: str, key_id: str) -> None:
        """Known here at once; written to the backend by the background task."""
        self._remember(response_id, (account, key_id))
        if len(self._pending) < _PENDING_MAX:
            self._pending[response_id] = (account, key_id)
            self._wake.set()

    async def lookup(self, response_id: str) -> tuple[str, str] | None:
        """(account uid, key id) of the response, or None. May raise the backend's error."""
        got = self._local.get(response_id)
        if got is not None:
            self._local.move_to_end(response_id)
            return got
        got = await self._backend.response_binding(response_id)
        if got is not None:
            self._remember(response_id, got)
        return got

    async def forget(self, response_id: str) -> None:
        self._local.pop(response_id, None)
        self._pending.pop(response_id, None)
        await self._backend.unbind_response(response_id)

    def _remember(self, response_id: str, value: tuple[str, str]) -> None:
        self._local[response_id] = value
        self._local.move_to_end(response_id)
        while len(self._local) > _LOCAL_MAX:
            self._local.popitem(last=False)

    # -- the writer ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="response-bindings")

    async def close(self) -> None:
        await stop(self._task)
        self._task = None
        await self._flush()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self._flush():
                await asyncio.sleep(1.0)  # the backend is failing: try again in a second

    async def _flush(self) -> bool:
        while self._pending:
            response_id, (account, key_id) = next(iter(self._pending.items()))
            try:
                await self._backend.bind_response(response_id, account, key_id, self.ttl)
            except Exception as e:  # noqa: BLE001 - kept in line and retried
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.error("response bindings: the backend failed (%s); %d wait to be written",
                              type(e).__name__, len(self._pending))
                self._wake.set()
                return False
            if self._pending.get(response_id) == (account, key_id):
                del self._pending[response_id]
        return True
