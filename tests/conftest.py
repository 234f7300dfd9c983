"""Shared fixtures: a fake OpenAI upstream (real HTTP) and the relay started as it runs in production."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ holds the fake upstream

from bench import fake_upstream as fake  # noqa: E402
from relay.app import start  # noqa: E402
from relay.config import Config, parse_config  # noqa: E402

CLIENT_KEY = "sk-test-" + "a1b2c3d4" * 6
ACCOUNTS = ("acct-0", "acct-1", "acct-2")
MODELS = ["demo", "gpt-4o-mini", "text-embedding-3-small", "dall-e-3", "tts-1", "whisper-1", "omni-moderation-latest"]


@dataclass
class Upstream:
    """A running fake OpenAI upstream and its test hooks."""

    server: TestServer
    app: web.Application

    @property
    def url(self) -> str:
        return str(self.server.make_url("/v1"))

    @property
    def records(self) -> list[Any]:
        return self.app[fake.RECORDS]

    @property
    def script(self) -> dict[str, list[Any]]:
        return self.app[fake.SCRIPT]

    @property
    def disconnects(self) -> Any:
        return self.app[fake.DISCONNECTS]

    @property
    def options(self) -> fake.FakeOptions:
        return self.app[fake.OPTIONS]


@dataclass
class Relay:
    url: str  # base URL without /v1
    app: web.Application
    config: Config
    database: str

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    app = fake.build_app(fake.FakeOptions())
    server = await aiohttp_server(app)  # TestServer cancels handlers on disconnect
    return Upstream(server, app)


def relay_config(upstream_url: str, database: str, **overrides: Any) -> dict[str, Any]:
    """A config dict (as YAML would give it) with one channel of three accounts on the fake upstream."""
    raw: dict[str, Any] = {
        "database": database,
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [
            {"name": "fake", "type": "openai", "base_url": upstream_url, "keys": list(ACCOUNTS), "models": MODELS}
        ],
        "prices": {
            "demo": {"input": 1, "output": 2},
            "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
            "text-embedding-3-small": {"input": 0.02},
            "dall-e-3": {"image": 0.04, "images": {"1024x1024/hd": 0.08}},
            "tts-1": {"characters": 15},
            "whisper-1": {"minute": 0.006},
            "omni-moderation-latest": {"free": True},
        },
        "retry": {"failure_threshold": 100},
        "ledger": {"flush_interval": 0.05},
        "health": {"enabled": False},  # probes would add requests to the fake's records; tests turn them on
        "log_level": "warning",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


RelayFactory = Callable[..., Awaitable[Relay]]


@pytest.fixture
async def relay_factory(tmp_path: Path, upstream: Upstream) -> AsyncIterator[RelayFactory]:
    """Start a relay on a free port; keyword arguments override top-level config sections."""
    runners: list[web.AppRunner] = []

    async def make(**overrides: Any) -> Relay:
        db = overrides.pop("database", None) or str(tmp_path / f"relay{len(runners)}.db")  # or a postgresql:// URL
        cfg = parse_config(relay_config(upstream.url, db, **overrides), os.environ)
        runner, url = await start(cfg, "127.0.0.1", 0)
        runners.append(runner)
        return Relay(url, runner.app, cfg, db)  # type: ignore[arg-type]

    yield make
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> Relay:
    return await relay_factory()


@pytest.fixture
def openai_client(relay: Relay) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)


def read_ledger(path: str) -> list[dict[str, Any]]:
    """The ledger's rows as the relay wrote them so far (read-only; none before the file exists)."""
    if not Path(path).exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM usage ORDER BY id")]
        except sqlite3.OperationalError:
            return []


async def wait_ledger(path: str, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Poll until the ledger holds at least `n` rows (or `timeout` passes); returns what it holds."""
    deadline = time.monotonic() + timeout
    while len(rows := read_ledger(path)) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return rows
