"""`relay serve --workers N` as a real process tree: the parent restarts dead workers and stops them all.

A worker killed with SIGKILL under a steady stream of requests is replaced within seconds, the count shows in
/metrics and the log names it; SIGTERM to the parent then drains everything and exits 0. A worker that cannot
start does not make the parent spin. The tokenizer is loaded once, in the parent: the workers use it, yet
their own memory stays far below its size.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import CLIENT_KEY
from tests.procs import ROOT, Processes, auth, exit_code, free_port

AUTH = auth(CLIENT_KEY)
PROMPT = [{"role": "user", "content": "Tell me about supervisors."}]
TOKENIZER_MB = 80  # o200k_base alone, loaded (cl100k_base adds more)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def write_config(tmp: Path, upstream_url: str, database: str | None = None, **server: Any) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", **server},
        "database": database or str(tmp / "relay.db"),
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream_url,
                      "keys": ["acct-0", "acct-1", "acct-2"], "models": ["demo"]}],
        "prices": {"demo": {"input": 1, "output": 2}},
        "ledger": {"flush_interval": 0.05},
        "log_level": "info",
    }))
    return path


def children(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.update(int(p) for p in (task / "children").read_text().split())
    except OSError:
        pass
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def full_log(procs: Processes) -> str:
    path = procs.tmp / "relay.log"
    return path.read_text(errors="replace") if path.exists() else ""


def private_mb(pid: int) -> float:
    kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return kb / 1024


async def start_workers(procs: Processes, config: Path, workers: int, healthy: bool = True) -> tuple[subprocess.Popen[Any], str]:
    """`python -m relay serve --workers N`; with `healthy`, returns once all N workers are listening."""
    port = free_port()
    with open(procs.tmp / "relay.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", str(port),
             "--workers", str(workers)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    procs.started.append(proc)
    url = f"http://127.0.0.1:{port}"
    if healthy:
        deadline = time.monotonic() + 30
        while full_log(procs).count("relay listening on") < workers:
            assert proc.poll() is None, f"relay exited early:\n{procs.log()}"
            assert time.monotonic() < deadline, f"the workers did not start:\n{procs.log()}"
            await asyncio.sleep(0.05)
    return proc, url


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@dataclass
class Sent:
    started: float
    status: int | None = None
    error: BaseException | None = None


async def test_a_killed_worker_is_restarted_and_sigterm_stops_all(procs):
    upstream = await procs.fake_upstream("--latency-ms", "20")
    relay, url = await start_workers(procs, write_config(procs.tmp, upstream, shutdown_grace=5), 2)
    first = children(relay.pid)
    assert len(first) == 2

    sent: list[Sent] = []
    done = asyncio.Event()
    # a new connection per request: SO_REUSEPORT spreads them over both workers
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def client() -> None:
            while not done.is_set():
                s = Sent(time.monotonic())
                sent.append(s)
                req = {"model": "demo", "messages": PROMPT}
                try:
                    async with http.post(url + "/v1/chat/completions", json=req, headers=AUTH) as resp:
                        await resp.read()
                        s.status = resp.status
                except aiohttp.ClientError as e:
                    s.error = e
                await asyncio.sleep(0.01)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(1.0)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(children(relay.pid) - first) == 1 and len(children(relay.pid)) == 2, 10,
                       f"no new worker replaced {victim}:\n{procs.log()}")
        restarted = time.monotonic()
        (new,) = children(relay.pid) - first
        await asyncio.sleep(1.5)
        done.set()
        await asyncio.gather(*clients)

        before = [s for s in sent if s.started < restarted]
        after = [s for s in sent if s.started >= restarted]
        assert sum(s.status == 200 for s in before) >= 20, "no steady stream before the kill"
        # only what was in flight on the killed worker may fail, and only as a lost connection
        failed = [s for s in before if s.status != 200]
        assert all(isinstance(s.error, aiohttp.ClientConnectionError) for s in failed), failed
        assert len(failed) <= 4, failed
        assert len(after) >= 20 and all(s.status == 200 for s in after), [s for s in after if s.status != 200]

        # every worker, the survivor started before the restart included, shows the parent's count
        for _ in range(10):
            async with http.get(url + "/metrics") as resp:
                text = await resp.text()
            assert re.search(r"^relay_worker_restarts_total 1\.0$", text, re.M), text

    assert re.search(rf"worker \d \(pid {victim}\) killed by signal 9 \(SIGKILL\); restarted as pid {new}\b", full_log(procs))
    relay.send_signal(signal.SIGTERM)
    assert await exit_code(relay, 30) == 0, procs.log()
    assert not any(alive(pid) for pid in first | {new})


async def test_a_worker_that_cannot_start_is_retried_with_a_back_off(procs, tmp_path):
    upstream = await procs.fake_upstream()
    config = write_config(tmp_path, upstream, database=str(tmp_path))  # a directory: SQLite cannot open it
    relay, _ = await start_workers(procs, config, 2, healthy=False)
    await wait_for(lambda: "tokenizer loaded" in full_log(procs), 30, f"the parent did not start:\n{procs.log()}")
    started = time.monotonic()  # the first workers are forked right after this line
    await asyncio.sleep(4.0)
    assert relay.poll() is None, procs.log()
    elapsed = time.monotonic() - started
    log = full_log(procs)
    restarts = len(re.findall(r"worker \d \(pid \d+\) exited with status 1; restarted as pid \d+", log))
    assert restarts >= 2, log  # it keeps trying...
    # ...at most once per second per slot after the first retry (no back-off: dozens a second)
    assert restarts <= 2 * (1 + elapsed), log
    assert "after a 1 s back-off" in log
    workers = children(relay.pid)
    relay.send_signal(signal.SIGTERM)
    await exit_code(relay, 15)
    assert not any(alive(pid) for pid in workers)


async def test_workers_share_the_tokenizer_loaded_once_by_the_parent(procs, tmp_path):
    upstream = await procs.fake_upstream("--chunk-delay-ms", "20", "--chunks", "30")
    relay, url = await start_workers(procs, write_config(procs.tmp, upstream), 2)
    workers = children(relay.pid)

    # streams the client leaves after the first event: the upstream reports no usage, so each worker counts
    # the prompt and the delivered text with the tokenizer
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def leave_early() -> None:
            req = {"model": "demo", "messages": PROMPT, "stream": True}
            async with http.post(url + "/v1/chat/completions", json=req, headers=AUTH) as resp:
                assert resp.status == 200
                await resp.content.readuntil(b"\n\n")

        await asyncio.gather(*(leave_early() for _ in range(40)))

    async def estimated() -> int:
        conn = sqlite3.connect(tmp_path / "relay.db")
        try:
            return int(conn.execute("SELECT count(*) FROM usage WHERE usage_source = 'estimate'").fetchone()[0])
        finally:
            conn.close()

    deadline = time.monotonic() + 10
    while await estimated() < 40:
        assert time.monotonic() < deadline, "the abandoned streams were not charged by estimate"
        await asyncio.sleep(0.1)

    assert full_log(procs).count("tokenizer loaded") == 1, procs.log()
    for pid in workers:
        # a worker that loaded its own copy would hold at least TOKENIZER_MB of its own
        assert private_mb(pid) < TOKENIZER_MB * 0.6, (pid, private_mb(pid))
    relay.send_signal(signal.SIGTERM)
    assert await exit_code(relay, 30) == 0, procs.log()
