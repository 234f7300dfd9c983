"""Relay and fake-upstream processes for tests that need real processes (kill -9, workers, several relays).

Every process a test starts is stopped by its own PID at the end; nothing else is touched.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "Answer", "Processes", "auth", "exit_code", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    started: float = 0.0
    ended: float = 0.0

    @property
    def error(self) -> dict[str, Any] | None:
        if self.status < 400:
            return None
        return orjson.loads(self.body).get("error")

    @property
    def code(self) -> str | None:
        err = self.error
        return None if err is None else err.get("code")


class Processes:
    """Processes a test started; each is stopped by its own PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[Any]] = []

    async def fake_upstream(self, *args: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.started.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert "listening on " in line, line
        return line.split("listening on ", 1)[1].strip()

    async def relay(
        self, config: Path, port: int | None = None, *args: str, log: str = "relay.log",
    ) -> tuple[subprocess.Popen[Any], str]:
        """`python -m relay serve` on `port` (a free one by default); returns once /healthz answers."""
        port = port or free_port()
        with open(self.tmp / log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", str(port), *args],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None, f"the relay exited early:\n{self.log(log)}"
                try:
                    async with http.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            return proc, url
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"the relay did not start:\n{self.log(log)}"
                await asyncio.sleep(0.05)

    def log(self, name: str = "relay.log") -> str:
        path = self.tmp / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.kill()  # SIGKILL to this PID only
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout is not None:
                proc.stdout.close()


async def exit_code(proc: subprocess.Popen[Any], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (code := proc.poll()) is None:
        assert time.monotonic() < deadline, f"process {proc.pid} did not exit within {timeout}s"
        await asyncio.sleep(0.05)
    return code
