"""Shutdown and startup of `python -m relay serve` as a real process.

SIGTERM under load: in-flight requests finish (or, past the grace period, end with an error event) and no
ledger row is lost. A bad config stops the command before anything starts, with one line naming the field.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tests.conftest import CLIENT_KEY

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
PROMPT = [{"role": "user", "content": "Tell me about graceful shutdowns."}]


# -- processes -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Kill a process this test started (by its PID) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@dataclass
class Procs:
    tmp: Path
    started: list[subprocess.Popen[Any]] = field(default_factory=list)

    async def fake_upstream(self, *args: str) -> str:
        """Start bench.fake_upstream on a free port; returns its /v1 URL once it listens."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.started.append(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        except TimeoutError:
            proc.kill()
            raise AssertionError("the fake upstream did not start") from None
        assert "listening on " in line, line
        return line.split("listening on ", 1)[1].strip()

    def write_config(self, upstream_url: str, **server: Any) -> Path:
        cfg = {
            "server": {"host": "127.0.0.1", **server},
            "database": str(self.tmp / "relay.db"),
            "client_keys": [{"name": "test", "key": CLIENT_KEY}],
            "channels": [{
                "name": "fake", "type": "openai", "base_url": upstream_url,
                "keys": ["acct-0", "acct-1", "acct-2"], "models": ["demo"],
            }],
            "prices": {"demo": {"input": 1, "output": 2}},
            "ledger": {"flush_interval": 0.05},
            "log_level": "info",
        }
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    async def relay(self, config: Path) -> tuple[subprocess.Popen[Any], str]:
        """Start `python -m relay serve`; returns the process and its base URL once /healthz answers."""
        port = free_port()
        log = open(self.tmp / "relay.log", "wb")  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", str(port)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None, f"relay exited early:\n{self.log()}"
                try:
                    async with http.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            return proc, url
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"relay did not become healthy:\n{self.log()}"
                await asyncio.sleep(0.05)

    def log(self) -> str:
        path = self.tmp / "relay.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        for proc in reversed(p.started):
            _stop(proc)


async def wait_exit(proc: subprocess.Popen[Any], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (code := proc.poll()) is None:
        assert time.monotonic() < deadline, f"process {proc.pid} did not exit within {timeout}s"
        await asyncio.sleep(0.05)
    return code


def ledger(db: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        return {r["request_id"]: dict(r) for r in conn.execute("SELECT * FROM usage")}
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[bytes]:
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out


def is_error_event(payload: bytes) -> bool:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    err = obj.get("error") if isinstance(obj, dict) else None
    return isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err)


# -- SIGTERM under load ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    stream: bool
    status: int | None = None  # None: no HTTP response at all (refused, reset before headers)
    request_id: str | None = None
    body: bytes = b""
    cut: bool = False  # the response started but its body broke off
    finished_at: float = 0.0


async def test_sigterm_under_load_loses_no_ledger_row(procs, tmp_path):
    upstream = await procs.fake_upstream("--chunk-delay-ms", "20", "--chunks", "20", "--latency-ms", "150")
    config = procs.write_config(upstream, shutdown_grace=5)
    relay, url = await procs.relay(config)

    total = 200
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # one connection per request

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def one(i: int) -> Outcome:
            # half arrive at once, the rest spread over 0.8 s: SIGTERM lands in the middle
            await asyncio.sleep(max(0, i - total // 2) * 0.008)
            out = Outcome(stream=i % 2 == 0)
            req = {"model": "demo", "messages": PROMPT, "stream": out.stream}
            try:
                async with http.post(url + "/v1/chat/completions", json=req, headers=AUTH) as resp:
                    out.status = resp.status
                    out.request_id = resp.headers.get("x-request-id")
                    try:
                        out.body = await resp.read()
                    except aiohttp.ClientError:
                        out.cut = True
            except aiohttp.ClientError:
                pass
            out.finished_at = time.monotonic()
            return out

        tasks = [asyncio.create_task(one(i)) for i in range(total)]
        await asyncio.sleep(0.4)
        relay.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        outcomes = await asyncio.gather(*tasks)

    assert await wait_exit(relay, 30) == 0, procs.log()

    answered = [o for o in outcomes if o.status is not None]
    ok = [o for o in answered if o.status == 200]
    # under load: many requests were served, and some of them were still running when SIGTERM came
    assert len(ok) >= 50, f"{len(ok)} of {total} succeeded"
    assert any(o.finished_at > signalled + 0.05 for o in ok), "nothing was in flight at SIGTERM"
    assert all(o.request_id for o in answered)

    rows = ledger(tmp_path / "relay.db")
    # one row per request that got any HTTP response, and no row for anything else
    assert set(rows) == {o.request_id for o in answered}
    assert sum(1 for r in rows.values() if r["status"] == 200) == len(ok)
    for o in ok:
        row = rows[o.request_id]
        assert row["status"] == 200 and bool(row["stream"]) == o.stream
        assert not o.cut, "a response body broke off"
        if o.stream:
            events = sse_events(o.body)
            assert events, o.body
            assert events[-1] == b"[DONE]" or is_error_event(events[-1]), events[-1]
            assert row["end_reason"] == ("ok" if events[-1] == b"[DONE]" else "shutdown")
        else:
            assert orjson.loads(o.body)["object"] == "chat.completion"
            assert row["end_reason"] == "ok"


async def test_stream_longer_than_grace_ends_with_an_error_event(procs, tmp_path):
    upstream = await procs.fake_upstream("--chunk-delay-ms", "200", "--chunks", "50")  # a 10 s stream
    config = procs.write_config(upstream, shutdown_grace=0.5)
    relay, url = await procs.relay(config)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        req = {"model": "demo", "messages": PROMPT, "stream": True}
        async with http.post(url + "/v1/chat/completions", json=req, headers=AUTH) as resp:
            assert resp.status == 200
            request_id = resp.headers["x-request-id"]
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            assert b"chat.completion.chunk" in first
            relay.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest = await asyncio.wait_for(resp.read(), 10)  # raises if the stream is cut silently
            ended = time.monotonic()

    events = sse_events(first + rest)
    assert b"[DONE]" not in events
    assert is_error_event(events[-1]), events[-1]
    assert all(not is_error_event(e) for e in events[:-1])
    assert ended - signalled < 5  # the grace is 0.5 s: the stream is not left to run its 10 s

    assert await wait_exit(relay, 30) == 0, procs.log()
    row = ledger(tmp_path / "relay.db")[request_id]
    assert row["status"] == 200 and row["end_reason"] == "shutdown"


# -- a bad config starts nothing -------------------------------------------------------------------------


def _occupied_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("channel-type", "channels[0].type"),
        ("port-out-of-range", "server.port"),
        ("port-not-a-number", "server.port"),
        ("port-in-use", "server.port"),
        ("cli-port", "--port"),
    ],
)
def test_invalid_config_exits_2_with_one_line_naming_the_field(tmp_path, case, names):
    port = free_port()
    db = tmp_path / "relay.db"
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "database": str(db),
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [{"name": "fake", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                      "keys": ["acct-0"], "models": ["demo"]}],
    }
    extra: list[str] = []
    held: socket.socket | None = None
    if case == "channel-type":
        cfg["channels"][0]["type"] = "foo"
    elif case == "port-out-of-range":
        cfg["server"]["port"] = 70000
    elif case == "port-not-a-number":
        cfg["server"]["port"] = "eighty"
    elif case == "port-in-use":
        held, cfg["server"]["port"] = _occupied_port()
    elif case == "cli-port":
        extra = ["--port", "99999"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "relay", "serve", "--config", str(path), *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )
    finally:
        if held is not None:
            held.close()
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert names in lines[0], lines[0]
    assert done.stdout == ""
    assert not db.exists()  # nothing was started, not even the database
