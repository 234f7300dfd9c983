"""log_level: debug must not turn on the libraries whose debug lines carry SQL or raw protocol bytes."""

from __future__ import annotations

import logging

from relay.app import configure_logging


def test_debug_level_keeps_database_and_http_internals_at_warning() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        configure_logging("debug")
        assert logging.getLogger("relay").isEnabledFor(logging.DEBUG)
        for name in ("aiosqlite", "asyncpg", "aiohttp.access", "aiohttp.internal"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    finally:
        root.setLevel(before)
