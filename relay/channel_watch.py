"""Every process's copy of the channels: polls the store for channels changed since its last look and
rebuilds the router with them (Router.reload), so a channel added, changed, turned off or deleted anywhere
serves or stops everywhere within a poll interval (0.25 s), with no query per request.

One poll is one indexed query (`rev > last`) that returns nothing in the steady state. Only changed
channels are opened (their secrets decrypted); a channel whose secrets cannot be opened (RELAY_SECRET unset
or not the one that sealed them) is left out, said once in one line, and the others serve on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from .channels import config_of
from .config import ChannelConfig
from .router import Router
from .secretbox import SecretBox, SecretError
from .store_api import ChannelRow, Storage
from .tasks import stop

__all__ = ["ChannelWatch"]

log = logging.getLogger("relay.channels")


class ChannelWatch:
    def __init__(
        self, store: Storage, router: Router, box: SecretBox | None, local: Iterable[ChannelConfig],
        poll_interval: float = 0.25, on_reload: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._router = router
        self._box = box
        self._local = {c.name: c for c in local}
        self._order = {c.name: i for i, c in enumerate(self._local.values())}
        self._poll = poll_interval
        self._on_reload = on_reload
        self._rows: dict[str, ChannelRow] = {}
        self._configs: dict[str, ChannelConfig | None] = {}
        self._rev = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def rev(self) -> int:
        return self._rev

    @property
    def router(self) -> Router:
        return self._router

    async def refresh(self) -> int:
        """Take in every channel changed since the last refresh and reload the router if any; returns how many."""
        async with self._lock:  # the poller and an admin call may refresh at once: one reload at a time
            changed = await self._store.channels_changed_since(self._rev)
            if not changed:
                return 0
            for row in changed:
                self._rev = max(self._rev, row.rev)
                if row.deleted:
                    self._rows.pop(row.name, None)
                    self._configs.pop(row.name, None)
                    continue
                self._rows[row.name] = row
                self._configs[row.name] = self._open(row)
            self._apply()
            return len(changed)

    def _open(self, row: ChannelRow) -> ChannelConfig | None:
        try:
            ch = config_of(row, self._box, self._local)
        except SecretError as e:
            log.error("channel %s: its keys cannot be decrypted (%s): not served", row.name, e)
            return None
        if ch is None:
            log.warning("channel %s comes from a config.yaml this process does not have: not served here", row.name)
        return ch

    def _apply(self) -> None:
        # config.yaml's channels first, in its order, then the API's in the order they were added
        rows = sorted(
            self._rows.values(), key=lambda r: (self._order.get(r.name, len(self._order)), r.created_at, r.name),
        )
        channels = [c for r in rows if r.enabled and (c := self._configs.get(r.name)) is not None and c.keys]
        off = {(r.name, uid) for r in rows for uid in r.accounts_off}
        self._router.reload(channels, off)
        if self._on_reload is not None:
            self._on_reload()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channel-poller")

    async def close(self) -> None:
        await stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.refresh()
            except Exception as e:  # noqa: BLE001 - a failed poll keeps the channels already loaded
                log.error("channel refresh failed (%s); keeping the channels already loaded", type(e).__name__)
