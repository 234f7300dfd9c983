"""The machine's Redis for tests (RELAY_TEST_REDIS_URL, default redis://127.0.0.1:6379/15): each test works
under a key prefix of its own and deletes only that prefix afterwards.

Without a reachable Redis the tests that need one skip, saying why; with CI=true they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

__all__ = ["REDIS_URL", "redis_client", "redis_prefix"]

REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_client() -> redis.Redis:
    """A connected client, or the test skips (fails under CI=true) naming why."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        client.close()
        reason = f"no Redis reachable at {REDIS_URL} (set RELAY_TEST_REDIS_URL): {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return client


@contextlib.contextmanager
def redis_prefix(tag: str, client: redis.Redis | None = None) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted on exit."""
    own = client is None
    c = redis_client() if client is None else client
    prefix = f"relay:test:{tag}:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        try:
            stale = list(c.scan_iter(match=prefix + "*", count=1000))
            if stale:
                c.delete(*stale)
        except (redis.RedisError, OSError):
            pass  # Redis went away meanwhile: nothing more to clean
        if own:
            c.close()
