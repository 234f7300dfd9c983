"""Processes the suite starts, and what /proc says about them: CPU time, RSS, PSS, private memory.

Every server runs as its own process on 127.0.0.1, pinned to a CPU (the process under test on one, the
fake upstreams, load generators and the suite itself on the other) and stopped by its own PID only.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CLK_TCK", "CPU_AUX", "CPU_SUT", "NPROC", "PY", "ROOT", "WATCH_PIDS", "Proc", "children", "cpu_seconds",
    "free_port", "machine_busy_seconds", "memory", "own_cpu_seconds", "preexec", "process_tree", "raise_nofile",
    "rss_kb", "smaps", "start_baseline", "start_fake", "start_fake_anthropic", "url",
]

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpus() -> tuple[int | None, int | None]:
    """(CPU for the process under test, CPU for everything else)."""
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) >= 2:
        return avail[0], avail[1]
    return None, None


CPU_SUT, CPU_AUX = _cpus()
NPROC = len(os.sched_getaffinity(0))
WATCH_PIDS: list[int] = []  # fake upstreams: their CPU is part of the benchmark, not outside load


# --------------------------------------------------------------------------- /proc readers


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def children(pid: int) -> list[int]:
    """pid's direct children, in the order the kernel lists them (the workers of `relay serve --workers N`)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime (+ cutime+cstime of reaped children) summed over pids, in seconds."""
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # fields after "(comm)": state=3 ... utime=14 stime=15 cutime=16 cstime=17
        rest = data[data.rfind(b")") + 2 :].split()
        ticks += int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """Busy CPU time of the whole machine (all CPUs, excluding idle and iowait)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(vals[:8]) - vals[3] - vals[4]) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU time of this process and of all its reaped children."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def rss_kb(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def smaps(pid: int) -> dict[str, int]:
    """kB by field of /proc/PID/smaps_rollup: Rss, Pss, Private_Clean, Private_Dirty ..."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0])
    return out


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and private (Private_Clean + Private_Dirty: pages no other process shares) in MB."""
    m = smaps(pid)
    return {"rss_mb": m["Rss"] / 1024, "pss_mb": m["Pss"] / 1024,
            "private_mb": (m["Private_Clean"] + m["Private_Dirty"]) / 1024}


# --------------------------------------------------------------------------- starting processes


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def preexec(cpu: int | None) -> Callable[[], None]:
    def fn() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        raise_nofile()

    return fn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def url(port: int, api: str = "chat") -> str:
    """The endpoint of `api` ("chat": chat completions, "responses": the Responses API) on a local port."""
    return f"http://127.0.0.1:{port}/v1/{'responses' if api == 'responses' else 'chat/completions'}"


class Proc:
    """A server process this run started (stopped by its own PID only)."""

    def __init__(self, name: str, argv: list[str], cpu: int | None, logdir: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.p = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=preexec(cpu),
        )
        self.pid = self.p.pid

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_ready(self, health_path: str | None = None, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}:\n{self.log_tail()}")
            try:
                if health_path is None:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                else:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{health_path}", timeout=1.0) as r:
                        if r.status == 200:
                            return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log.close()


def start_fake(logdir: Path, name: str, chunks: int, chunk_delay_ms: int, latency_ms: int = 0) -> Proc:
    port = free_port()
    argv = [
        PY, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", str(port),
        "--latency-ms", str(latency_ms), "--chunks", str(chunks),
        "--chunk-delay-ms", str(chunk_delay_ms), "--fail-rate", "0",
    ]
    proc = Proc(name, argv, CPU_AUX, logdir, port)
    proc.wait_ready()
    return proc


def start_baseline(logdir: Path, name: str, upstream: Proc) -> Proc:
    port = free_port()
    argv = [
        PY, "-m", "bench.baseline_proxy", "--host", "127.0.0.1", "--port", str(port),
        "--upstream", f"http://127.0.0.1:{upstream.port}",
    ]
    proc = Proc(name, argv, CPU_SUT, logdir, port)
    proc.wait_ready()
    return proc


def start_fake_anthropic(logdir: Path) -> Proc:
    """The test suite's fake Anthropic upstream (real wire format), as a server process."""
    port = free_port()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from aiohttp import web; "
        "from tests.fakes.anthropic_upstream import build_app; "
        "web.run_app(build_app(), host='127.0.0.1', port=int(sys.argv[2]), print=None, access_log=None)"
    )
    proc = Proc("fake-anthropic", [PY, "-c", code, str(ROOT), str(port)], CPU_AUX, logdir, port)
    proc.wait_ready()
    return proc
