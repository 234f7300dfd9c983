"""A PostgreSQL database of its own for each test (RELAY_TEST_PG_URL, default
postgresql://postgres@127.0.0.1:5432/test): created through a connection to that database with a unique
name, dropped afterwards.

Without a reachable server the tests that need one skip, saying why; with CI=true they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

PG_URL = os.environ.get("RELAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

__all__ = ["PG_URL", "pg_database", "pg_url", "with_database"]


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        reason = f"no PostgreSQL reachable at {PG_URL} (set RELAY_TEST_PG_URL): {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped on exit (with any connection still open to it)."""
    admin = await _admin()
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(PG_URL, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_database() as url:
        yield url
