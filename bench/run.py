"""Benchmark suite: direct upstream vs. minimal aiohttp proxy vs. the relay.

    python -m bench.run [--quick] [--out bench/RESULTS.md] [--targets direct,baseline,relay]
                        [--no-slow] [--set NAME=N ...]

Starts every process itself on 127.0.0.1 (fake upstreams, baseline proxy, relay,
load generators), pins the process under test to CPU 0 and everything else to
CPU 1, measures, stops what it started (by PID) and writes a Markdown report.

Phases:
  * non-stream chat at fixed concurrency: req/s, latency p50/p99, CPU s of the
    process under test per 10k requests (from /proc/PID/stat);
  * streaming chat at 100 concurrent streams: TTFB p50/p99 (and the difference
    to direct), CPU s per 1k streams;
    both run in rounds that alternate between the targets;
  * (baseline, relay; restarted against a slow fake) N concurrent slow streams:
    RSS per open stream ((peak VmRSS - VmRSS before) / N) and whether all N
    ended with [DONE].
Exit status 0 only if every relay target is met.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLIENT_KEY = "sk-bench-0123456789abcdef0123456789abcdef0123456789ab"
UPSTREAM_KEY = "k1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL = {
    "ns_requests": 20_000,
    "ns_concurrency": 50,
    # non-stream requests start at this fixed rate for every target: a proxy's CPU per request depends
    # on how hard it is driven (batching in the event loop), so every target is driven alike
    "ns_rate": 1_500,
    "ns_warmup": 1_000,
    "st_streams": 2_000,
    "st_concurrency": 100,
    "st_warmup": 200,
    "st_chunks": 20,
    "st_chunk_delay_ms": 10,
    "slow_streams": 5_000,
    "slow_chunks": 30,
    "slow_chunk_delay_ms": 500,
    "slow_ramp": 1_000,  # stream starts per second
    "rounds": 8,  # non-stream and stream phases alternate between targets in this many rounds
    "round_warmup": 2,  # unrecorded requests per connection at the start of each round
}
QUICK = {
    **FULL,
    "ns_requests": 3_000,
    "ns_warmup": 300,
    "st_streams": 500,
    "st_warmup": 100,
    "slow_streams": 1_000,
    "rounds": 2,
}

TARGETS = ("direct", "baseline", "relay", "relay+limits", "relay+redis")
# relay/baseline CPU per non-stream request of the core relay (auth, ledger, metrics; before billing and
# rate limits), from the full run recorded at commit 41a8cb8: billing and the key store may add at most 10 %.
CORE_NS_RATIO = 1.19
MAX_LIMITS_CPU_ADDED = 0.05
REDIS_URL = os.environ.get("RELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# Limits high enough never to refuse: the buckets are checked and charged on every request all the same.
BENCH_LIMITS = ("--rpm", "100000000", "--rpd", "1000000000", "--tpm", "100000000000", "--tpd", "1000000000000")
# Targets (all must hold for a pass).
MAX_CPU_RATIO = 1.5
MAX_ADDED_TTFB_P99_MS = 5.0
MAX_RSS_KB_PER_STREAM = 40.0
SLOW_TARGET_STREAMS = 5_000


# --------------------------------------------------------------------------- /proc helpers


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


# --------------------------------------------------------------------------- process management


def _cpus() -> tuple[int | None, int | None]:
    """(CPU for the process under test, CPU for everything else)."""
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) >= 2:
        return avail[0], avail[1]
    return None, None


CPU_SUT, CPU_AUX = _cpus()
WATCH_PIDS: list[int] = []  # fake upstreams: their CPU is part of the benchmark, not outside load
NPROC = len(os.sched_getaffinity(0))


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _preexec(cpu: int | None):
    def fn() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        _raise_nofile()

    return fn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server process this run started (stopped by its own PID only)."""

    def __init__(self, name: str, argv: list[str], cpu: int | None, logdir: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.p = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_preexec(cpu),
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
                    url = f"http://127.0.0.1:{self.port}{health_path}"
                    with urllib.request.urlopen(url, timeout=1.0) as r:
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


def start_relay(logdir: Path, name: str, upstream: Proc, redis: bool = False) -> tuple[Proc, str]:
    """Start a relay; returns it and a second client key that carries rate limits (never reached)."""
    port = free_port()
    cfg = logdir / f"{name}.yaml"
    db = logdir / f"{name}.db"
    limits = "limits: {backend: redis, redis_url: %s}\n" % json.dumps(REDIS_URL) if redis else ""
    cfg.write_text(
        "server: {host: 127.0.0.1, port: %d}\n"
        "database: %s\n"
        "client_keys:\n"
        "  - {name: bench, key: %s}\n"
        "channels:\n"
        "  - name: fake\n"
        "    type: openai\n"
        "    base_url: http://127.0.0.1:%d/v1\n"
        "    keys: [k1, k2, k3]\n"
        "    models: [demo]\n"
        "prices: {demo: {input: 1, output: 2}}\n"
        "%s"
        "log_level: warning\n" % (port, json.dumps(str(db)), CLIENT_KEY, upstream.port, limits)
    )
    made = subprocess.run(
        [PY, "-m", "relay", "keys", "create", "--config", str(cfg), "--name", "limited", *BENCH_LIMITS],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    limited_key = made.stdout.strip().splitlines()[-1]
    argv = [PY, "-m", "relay", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc(name, argv, CPU_SUT, logdir, port)
    proc.wait_ready("/healthz", timeout=60.0)
    return proc, limited_key


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


def stream_events(port: int, key: str, model: str) -> int:
    """SSE events (frames) the relay sends for one streamed answer of `model`."""
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(
        _url(port), data=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().count(b"data:")


def bench_translated(logdir: Path, prm: dict, log) -> dict:
    """Relay CPU per 1,000 stream frames: passthrough (an openai channel) beside translated (anthropic)."""
    fake = start_fake(logdir, "fake-tr", prm["st_chunks"], 0)
    claude = start_fake_anthropic(logdir)
    port = free_port()
    cfg = logdir / "relay-tr.yaml"
    cfg.write_text(
        "server: {host: 127.0.0.1, port: %d}\n"
        "database: %s\n"
        "client_keys:\n  - {name: bench, key: %s}\n"
        "channels:\n"
        "  - {name: fake, type: openai, base_url: 'http://127.0.0.1:%d/v1', keys: [k1], models: [demo]}\n"
        "  - {name: claude, type: anthropic, base_url: 'http://127.0.0.1:%d', keys: [ak1], models: [claude-bench]}\n"
        "prices: {demo: {input: 1, output: 2}, claude-bench: {input: 3, output: 15}}\n"
        "log_level: warning\n" % (port, json.dumps(str(logdir / "relay-tr.db")), CLIENT_KEY, fake.port, claude.port)
    )
    relay = Proc("relay-tr", [PY, "-m", "relay", "serve", "--config", str(cfg), "--port", str(port)],
                 CPU_SUT, logdir, port)
    out: dict = {}
    try:
        relay.wait_ready("/healthz", timeout=60.0)
        n = prm["st_streams"]
        for label, model in (("passthrough", "demo"), ("translated", "claude-bench")):
            frames = stream_events(port, CLIENT_KEY, model)
            run_load(_url(port), CLIENT_KEY, "stream", 200, 50, None, model=model)
            r = run_load(_url(port), CLIENT_KEY, "stream", n, 50, relay.pid, model=model)
            per_k = r["cpu_s"] / (r["ok"] * frames) * 1000 if r.get("ok") and frames else None
            out[label] = {"frames": frames, "streams": r.get("ok"), "errors": r.get("errors"),
                          "cpu_s": r.get("cpu_s"), "cpu_per_1k_frames": per_k}
            log(f"[{label}] {r.get('ok')} streams of {frames} frames: relay CPU {_f(per_k, 4)} s / 1k frames")
    finally:
        for p in (relay, claude, fake):
            p.stop()
    return out


def redis_reachable() -> bool:
    from urllib.parse import urlsplit

    u = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- load phases


def run_load(
    url: str,
    key: str,
    mode: str,
    requests: int,
    concurrency: int,
    sut_pid: int | None,
    warmup: int = 0,
    ramp: float = 0.0,
    stagger: float = 0.0,
    raw: bool = False,
    timeout: float = 240.0,
    model: str = "demo",
) -> dict:
    """Run one load-generator process; measure CPU and peak RSS of the process under test.

    With `warmup`, the load generator first sends that many unrecorded requests over the same
    keep-alive connections; the counters are read after them, right before the measured requests.
    """
    import select

    argv = [
        PY, "-m", "bench.load", "--url", url, "--key", key, "--mode", mode,
        "--requests", str(requests), "--concurrency", str(concurrency), "--ramp", str(ramp),
        "--stagger", str(stagger), "--warmup", str(warmup), "--model", model,
    ] + (["--raw"] if raw else [])
    tree: list[int] = []
    watch: list[int] = []
    m: dict = {}
    rss_peak = 0

    def start_measuring(loadgen_pid: int) -> None:
        nonlocal tree, watch, rss_peak
        tree = process_tree(sut_pid) if sut_pid else []
        # CPU of everything that is not part of the benchmark is estimated for the phase
        watch = [p for w in WATCH_PIDS for p in process_tree(w) if p not in tree]
        m["rss_before"] = rss_kb(tree) if tree else 0
        m["cpu_before"] = cpu_seconds(tree) if tree else 0.0
        m["busy0"] = machine_busy_seconds()
        m["mine0"] = own_cpu_seconds() + cpu_seconds([loadgen_pid])
        m["watch0"] = cpu_seconds(watch)
        m["t0"] = time.monotonic()
        rss_peak = m["rss_before"]

    errbuf = b""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE,
            preexec_fn=_preexec(CPU_AUX),
        )
        assert p.stdin is not None and p.stderr is not None
        os.set_blocking(p.stderr.fileno(), False)
        if warmup <= 0:
            start_measuring(p.pid)
        deadline = time.monotonic() + timeout
        try:
            while p.poll() is None:
                ready, _, _ = select.select([p.stderr], [], [], 0.02)
                if ready:
                    data = p.stderr.read() or b""
                    errbuf += data
                    if not m and b"WARM\n" in errbuf:
                        start_measuring(p.pid)
                        p.stdin.write(b"go\n")
                        p.stdin.flush()
                if tree:
                    rss_peak = max(rss_peak, rss_kb(tree))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"load generator exceeded {timeout:.0f}s ({mode} {url})")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
            try:
                errbuf += p.stderr.read() or b""
            except OSError:
                pass
            p.stderr.close()
            try:
                p.stdin.close()
            except OSError:
                pass
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
    if p.returncode != 0 or not text or not m:
        raise RuntimeError(
            f"load generator failed (rc={p.returncode}):\n{errbuf.decode(errors='replace')[-2000:]}"
        )
    wall = time.monotonic() - m["t0"]
    cpu_after = cpu_seconds(process_tree(sut_pid)) if tree else 0.0
    outside = (machine_busy_seconds() - m["busy0"]) - (own_cpu_seconds() - m["mine0"]) \
        - (cpu_seconds(watch) - m["watch0"]) - (cpu_after - m["cpu_before"])
    res = json.loads(text.splitlines()[-1])
    res["wall_s"] = wall
    res["outside_cpu_s"] = max(0.0, outside)
    if tree:
        res["cpu_s"] = cpu_after - m["cpu_before"]
        res["rss_before_kb"] = m["rss_before"]
        res["rss_peak_kb"] = rss_peak
    return res


@dataclass
class TargetResult:
    name: str
    ns: dict = field(default_factory=dict)
    st: dict = field(default_factory=dict)
    slow: dict = field(default_factory=dict)


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/chat/completions"


@dataclass
class Target:
    name: str
    port: int
    key: str
    pid: int  # the process under test


def _merge(rounds: list[dict]) -> dict:
    """Pool the rounds of one target: counts and CPU summed, percentiles over all samples."""
    out: dict = {"rounds": len(rounds), "ok": 0, "errors": 0, "elapsed_s": 0.0, "cpu_s": 0.0,
                 "wall_s": 0.0, "outside_cpu_s": 0.0, "bad_status": {}, "exceptions": {}}
    lat: list[float] = []
    ttfb: list[float] = []
    ttft: list[float] = []
    stream = "ttfb_ms" in rounds[0]
    if stream:
        out.update(done=0, open_max=0)
    for r in rounds:
        out["ok"] += r["ok"]
        out["errors"] += r["errors"]
        out["elapsed_s"] += r["elapsed_s"]
        out["cpu_s"] += r.get("cpu_s", 0.0)
        out["wall_s"] += r["wall_s"]
        out["outside_cpu_s"] += r["outside_cpu_s"]
        for k in ("bad_status", "exceptions"):
            for kk, v in r.get(k, {}).items():
                out[k][kk] = out[k].get(kk, 0) + v
        lat += r.get("lat_ms", [])
        if stream:
            ttfb += r.get("ttfb_ms", [])
            ttft += r.get("ttft_ms", [])
            out["done"] += r["done"]
            out["open_max"] = max(out["open_max"], r["open_max"])
    out["rps"] = round(out["ok"] / out["elapsed_s"], 1) if out["elapsed_s"] else None
    out["lat_p50_ms"] = _pct(lat, 50)
    out["lat_p99_ms"] = _pct(lat, 99)
    out["round_p99_ms"] = [r.get("lat_p99_ms") for r in rounds]
    out["round_cpu_per"] = [r["cpu_s"] / r["ok"] if r.get("ok") and "cpu_s" in r else None for r in rounds]
    if stream:
        out["ttfb_p50_ms"] = _pct(ttfb, 50)
        out["ttfb_p99_ms"] = _pct(ttfb, 99)
        out["round_p99_ms"] = [r.get("ttfb_p99_ms") for r in rounds]
        out["ttft_p50_ms"] = _pct(ttft, 50)
        out["ttft_p99_ms"] = _pct(ttft, 99)
        out["round_ttft_p99_ms"] = [r.get("ttft_p99_ms") for r in rounds]
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))]


def bench_interleaved(targets: list[Target], prm: dict, log) -> dict[str, TargetResult]:
    """Non-stream and stream phases, in rounds that alternate between the targets.

    Alternating rounds spread any outside disturbance (other work on the machine, frequency
    changes) over all targets instead of letting it land on one of them.
    """
    res = {t.name: TargetResult(t.name) for t in targets}
    rounds = prm["rounds"]
    stagger = prm["st_chunks"] * prm["st_chunk_delay_ms"] / 1000.0
    # workers' first streams are spread over one stream's duration so the concurrent streams
    # run out of phase (steady state) instead of starting and ending in bursts
    for t in targets:
        log(f"[{t.name}] warm-up")
        run_load(_url(t.port), t.key, "nonstream", prm["ns_warmup"], prm["ns_concurrency"], None)
        run_load(_url(t.port), t.key, "stream", prm["st_warmup"], prm["st_concurrency"], None,
                 stagger=stagger)
    per = max(1, prm["ns_requests"] // rounds)
    log(f"non-stream: {rounds} rounds x {per} requests @ {prm['ns_concurrency']} per target")
    parts: dict[str, list[dict]] = {t.name: [] for t in targets}
    for i in range(rounds):
        for t in targets:
            r = run_load(_url(t.port), t.key, "nonstream", per, prm["ns_concurrency"], t.pid,
                         warmup=prm["round_warmup"] * prm["ns_concurrency"], raw=True, ramp=prm["ns_rate"])
            parts[t.name].append(r)
            log(f"  [{t.name}] round {i + 1}: {_brief(r)}")
    for t in targets:
        res[t.name].ns = _merge(parts[t.name])
        log(f"[{t.name}] non-stream: {_brief(res[t.name].ns)}")
    per = max(1, prm["st_streams"] // rounds)
    log(f"stream: {rounds} rounds x {per} streams @ {prm['st_concurrency']} per target")
    parts = {t.name: [] for t in targets}
    for i in range(rounds):
        for t in targets:
            r = run_load(_url(t.port), t.key, "stream", per, prm["st_concurrency"], t.pid,
                         warmup=prm["round_warmup"] * prm["st_concurrency"], stagger=stagger, raw=True)
            parts[t.name].append(r)
            log(f"  [{t.name}] round {i + 1}: {_brief(r)}")
    for t in targets:
        res[t.name].st = _merge(parts[t.name])
        log(f"[{t.name}] stream: {_brief(res[t.name].st)}")
    return res


def bench_slow(name: str, port: int, key: str, sut_pid: int, prm: dict, log) -> dict:
    url = _url(port)
    n = prm["slow_streams"]
    # warm-up (non-stream only: a stream against this upstream takes seconds) so that first
    # connections and lazy imports are not counted as per-stream memory
    run_load(url, key, "nonstream", 500, 50, None)
    time.sleep(0.5)
    log(f"[{name}] slow streams: {n} concurrent")
    r = run_load(url, key, "stream", n, n, sut_pid, ramp=prm["slow_ramp"])
    r["rss_per_stream_kb"] = (r["rss_peak_kb"] - r["rss_before_kb"]) / n
    log(f"    {_brief(r)}")
    return r


def _brief(r: dict) -> str:
    parts = [f"ok={r.get('ok')}", f"err={r.get('errors')}", f"rps={r.get('rps')}"]
    if "ttfb_p99_ms" in r:
        parts += [f"ttfb p50/p99={r['ttfb_p50_ms']}/{r['ttfb_p99_ms']} ms",
                  f"ttft p50/p99={r.get('ttft_p50_ms')}/{r.get('ttft_p99_ms')} ms", f"done={r['done']}",
                  f"open_max={r['open_max']}"]
    else:
        parts += [f"lat p50/p99={r['lat_p50_ms']}/{r['lat_p99_ms']} ms"]
    if "cpu_s" in r:
        parts.append(f"cpu={r['cpu_s']:.2f}s")
    if r.get("wall_s"):
        parts.append(f"outside={outside_pct(r):.0f}%")
    if "rss_peak_kb" in r:
        parts.append(f"rss {r['rss_before_kb']}->{r['rss_peak_kb']} KB")
    if r.get("bad_status") or r.get("exceptions"):
        parts.append(f"failures={r.get('bad_status')}{r.get('exceptions')}")
    return " ".join(parts)


# --------------------------------------------------------------------------- report


def _f(v, nd: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def outside_pct(r: dict) -> float:
    """CPU used by processes outside the benchmark, in % of all CPUs, during the phase."""
    return r["outside_cpu_s"] / (r["wall_s"] * NPROC) * 100 if r.get("wall_s") else 0.0


def _rounds(r: dict) -> str:
    return " / ".join(_f(v, 1) for v in r.get("round_p99_ms", [])) or "n/a"


def added_p99_paired(target: dict, direct: dict, key: str = "round_p99_ms") -> float | None:
    """Median over rounds of (target TTFB p99 - direct TTFB p99 of the same round).

    Rounds of different targets run back to back, so pairing them cancels slow drifts and a
    single disturbed round cannot decide the result.
    """
    a, b = target.get(key) or [], direct.get(key) or []
    diffs = sorted(x - y for x, y in zip(a, b) if x is not None and y is not None)
    if not diffs:
        return None
    n = len(diffs)
    return diffs[n // 2] if n % 2 else (diffs[n // 2 - 1] + diffs[n // 2]) / 2


def _pct_s(r: dict) -> str:
    return f"{outside_pct(r):.0f}%" if r.get("wall_s") else "n/a"


def cpu_per(r: dict, unit: int) -> float | None:
    if not r or "cpu_s" not in r or not r.get("ok"):
        return None
    return r["cpu_s"] / r["ok"] * unit


def cpu_ratio(a: dict, b: dict) -> float | None:
    """Median over rounds of a's CPU per request divided by b's in the same round.

    Rounds alternate between targets, so a disturbance of the machine (another process, the host's own
    load) lands on one round of one target; the median of same-round ratios shrugs it off where pooled
    sums do not.
    """
    pairs = [x / y for x, y in zip(a.get("round_cpu_per", []), b.get("round_cpu_per", [])) if x and y]
    if not pairs:
        return None
    pairs.sort()
    mid = len(pairs) // 2
    return pairs[mid] if len(pairs) % 2 else (pairs[mid - 1] + pairs[mid]) / 2


def _verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else "PASS" if ok else "FAIL"


def run_micro() -> dict:
    """bench/micro.py on the CPU the relay runs on: billing and limits per request, in isolation."""
    out = subprocess.run(
        [PY, "-m", "bench.micro"], cwd=ROOT, capture_output=True, text=True, check=True,
        preexec_fn=_preexec(CPU_SUT),
    )
    return json.loads(out.stdout)


def relay_checks(results: dict[str, TargetResult], prm: dict, micro: dict | None = None) -> dict:
    """Pure function of the results: the four pass/fail checks of the relay."""
    checks = {}
    base, relay, direct = results.get("baseline"), results.get("relay"), results.get("direct")
    if not relay:
        return checks

    def ratio(unit, attr):
        b = cpu_per(getattr(base, attr), unit) if base else None
        r = cpu_per(getattr(relay, attr), unit)
        if b is None or r is None or b <= 0:
            return None, r, b
        return cpu_ratio(getattr(relay, attr), getattr(base, attr)), r, b

    q, r, b = ratio(10_000, "ns")
    q_ns = q
    checks["cpu_nonstream"] = (
        q is not None and q <= MAX_CPU_RATIO and relay.ns.get("errors", 1) == 0,
        f"relay CPU per non-stream request <= {MAX_CPU_RATIO}x baseline: {_f(q)}x (median of same-round "
        f"ratios; pooled {_f(r, 3)} vs {_f(b, 3)} CPU s / 10k requests)",
    )
    q, r, b = ratio(1_000, "st")
    checks["cpu_stream"] = (
        q is not None and q <= MAX_CPU_RATIO and relay.st.get("errors", 1) == 0,
        f"relay CPU per stream <= {MAX_CPU_RATIO}x baseline: {_f(q)}x (median of same-round ratios; "
        f"pooled {_f(r, 3)} vs {_f(b, 3)} CPU s / 1k streams)",
    )
    added = pooled = added_ttft = None
    if direct and direct.st.get("ttfb_p99_ms") is not None and relay.st.get("ttfb_p99_ms") is not None:
        added = added_p99_paired(relay.st, direct.st)
        pooled = relay.st["ttfb_p99_ms"] - direct.st["ttfb_p99_ms"]
        added_ttft = added_p99_paired(relay.st, direct.st, "round_ttft_p99_ms")
    checks["ttfb"] = (
        added is not None and added <= MAX_ADDED_TTFB_P99_MS and relay.st.get("errors", 1) == 0,
        f"added TTFB p99 <= {MAX_ADDED_TTFB_P99_MS:g} ms at {prm['st_concurrency']} concurrent streams: "
        f"{_f(added)} ms (median of per-round differences; pooled p99 difference {_f(pooled)} ms; "
        f"added TTFT p99 {_f(added_ttft)} ms)",
    )
    relay_us = cpu_per(relay.ns, 1_000_000)  # CPU µs per non-stream request of the relay in this run
    micro = micro or {}
    if relay_us and "billing_and_keys_us_per_request" in micro:
        share = micro["billing_and_keys_us_per_request"] / relay_us
        end_to_end = "" if q_ns is None else (
            f"; end to end {_f(q_ns)}x baseline (the core's {CORE_NS_RATIO:g}x was measured without the fixed "
            "request rate, so the two are not directly comparable)"
        )
        checks["billing"] = (
            share <= 0.10,
            f"billing and the key store cost <= 10 % of the relay's CPU per request: "
            f"{micro['billing_and_keys_us_per_request']:.2f} µs of {relay_us:.0f} µs = {_f(share * 100, 1)} % "
            f"(bench/micro.py, in isolation){end_to_end}",
        )
    limited = results.get("relay+limits")
    if limited:
        r_cpu, l_cpu = cpu_per(relay.ns, 10_000), cpu_per(limited.ns, 10_000)
        lr = cpu_ratio(limited.ns, relay.ns)
        if relay_us and "limits_us_per_request" in micro:
            added_cpu = micro["limits_us_per_request"] / relay_us
            end_to_end = "" if lr is None else (
                f"; end to end, relay+limits vs relay: {_f((lr - 1) * 100, 1)} % (median of same-round ratios; "
                f"pooled {_f(l_cpu, 3)} vs {_f(r_cpu, 3)} CPU s / 10k requests)"
            )
            checks["limits_cpu"] = (
                added_cpu <= MAX_LIMITS_CPU_ADDED and limited.ns.get("errors", 1) == 0,
                f"in-process rate limits add <= {MAX_LIMITS_CPU_ADDED * 100:g} % CPU per request: "
                f"{micro['limits_us_per_request']:.2f} µs of {relay_us:.0f} µs = {_f(added_cpu * 100, 1)} % "
                f"(bench/micro.py, in isolation){end_to_end}",
            )
    redis = results.get("relay+redis")
    if redis and limited:
        p50 = redis.ns.get("lat_p50_ms"), limited.ns.get("lat_p50_ms")
        p99 = redis.ns.get("lat_p99_ms"), limited.ns.get("lat_p99_ms")
        if None not in p50 and None not in p99:
            checks["redis_latency"] = (
                redis.ns.get("errors", 1) == 0,
                f"Redis limits backend, added latency vs in-process limits (non-stream, reported): "
                f"p50 {_f(p50[0] - p50[1])} ms, p99 {_f(p99[0] - p99[1])} ms; "
                f"CPU {_f(cpu_per(redis.ns, 10_000), 3)} CPU s / 10k requests",
            )
    s = relay.slow
    n = prm["slow_streams"]
    if s:
        all_done = s.get("done") == n and s.get("errors") == 0
        per = s.get("rss_per_stream_kb")
        ok = all_done and per is not None and per <= MAX_RSS_KB_PER_STREAM
        note = "" if n >= SLOW_TARGET_STREAMS else f" (quick run: {n}, target is {SLOW_TARGET_STREAMS})"
        checks["rss"] = (
            ok,
            f"{n} slow streams all complete with <= {MAX_RSS_KB_PER_STREAM:g} KB RSS per stream{note}: "
            f"{s.get('done')}/{n} with [DONE], {_f(per, 1)} KB per stream",
        )
    else:
        checks["rss"] = (None, "slow streams: not measured in this run")
    return checks


def render(results: dict[str, TargetResult], prm: dict, quick: bool, checks: dict, info: dict) -> str:
    import aiohttp

    L = []
    L.append("# Relay benchmark results")
    L.append("")
    L.append(
        f"- Date: {info['date']}  \n"
        f"- Machine: nproc {NPROC}, {platform.machine()}, "
        f"{info['cpu_model']}, Linux {platform.release()}  \n"
        f"- Python {platform.python_version()}, aiohttp {aiohttp.__version__}  \n"
        f"- Mode: {'quick' if quick else 'full'} (`python -m bench.run{' --quick' if quick else ''}`), "
        f"wall time {info['wall_s']:.0f} s"
    )
    L.append("")
    L.append("## Method")
    L.append("")
    L.append(
        f"Process under test pinned to CPU {CPU_SUT}; fake upstream, load generator (aiohttp client, uvloop, "
        f"keep-alive, separate process) on CPU {CPU_AUX}. Targets: *direct* = load generator straight to the "
        "fake upstream; *baseline* = minimal aiohttp passthrough proxy (`bench/baseline_proxy.py`); *relay* = "
        "`python -m relay serve` with client-key auth from the key store, billing (a priced model: reserve, then "
        "settle), SQLite ledger and metrics on; *relay+limits* = the same relay process with a key that has rpm, "
        "rpd, tpm and tpd limits (set too high to refuse: every bucket is checked and charged); *relay+redis* = "
        "a second relay with the Redis limits backend and such a key. "
        f"Non-stream: {prm['ns_requests']:,} chat requests per target at concurrency {prm['ns_concurrency']}, "
        f"started at a fixed {prm['ns_rate']:,} requests/s for every target (CPU per request depends on load). "
        f"Stream: {prm['st_streams']:,} streams per target at {prm['st_concurrency']} concurrent (first "
        "streams staggered over one stream's duration), fake sends "
        f"{prm['st_chunks']} chunks {prm['st_chunk_delay_ms']} ms apart (the first, a role-only preamble, at once); "
        "TTFB = request sent to first body byte; TTFT = to the first chunk with text; "
        "added TTFB = target minus direct, both over all samples, and (the checked figure) the median over "
        "rounds of the difference between the target's p99 and the direct p99 of the same round. "
        f"Both phases run in {prm['rounds']} rounds alternating between the targets; each round first sends "
        f"{prm['round_warmup']} unrecorded requests per connection (keep-alive connections open, counters "
        "read after them); percentiles are over all samples of all rounds; the checked CPU ratios are the "
        "median over rounds of the ratio between two targets' CPU per request in the same round. "
        f"Slow streams: {prm['slow_streams']:,} concurrent streams of {prm['slow_chunks']} chunks "
        f"{prm['slow_chunk_delay_ms']} ms apart; RSS per stream = (peak VmRSS - VmRSS before) / N. "
        "CPU = utime+stime of the process under test (and children) from /proc/PID/stat, after a warm-up. "
        "Billing (with the key checks) and rate limiting are also timed alone by `bench/micro.py` on the "
        "relay's CPU (100,000 requests through exactly the calls the request path makes), because their few "
        "microseconds are smaller than the end-to-end figures' round-to-round noise here."
    )
    L.append("")
    L.append(
        "Caveat: the load generator is Python on one core shared with the fake upstream, so req/s and latency "
        "are bounded by the client side, not by the proxy; the CPU-per-request figures of the process under "
        "test do not depend on the client's speed and are the figures to compare. For *direct* the process "
        "under test is the fake upstream itself (on CPU %s), shown for reference. *Outside load* = CPU time used "
        "by processes that are not part of the benchmark during that phase, in %% of all CPUs (from /proc/stat); "
        "anything above a few %% makes the latency columns unreliable." % CPU_AUX
    )
    L.append("")
    L.append("## Non-stream chat")
    L.append("")
    L.append("| target | ok | errors | req/s | p50 ms | p99 ms | p99 per round ms | CPU s / 10k req | outside load |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        ns = r.ns
        L.append(
            f"| {name} | {ns.get('ok')} | {ns.get('errors')} | {_f(ns.get('rps'), 0)} | "
            f"{_f(ns.get('lat_p50_ms'))} | {_f(ns.get('lat_p99_ms'))} | {_rounds(ns)} | "
            f"{_f(cpu_per(ns, 10_000), 3)} | {_pct_s(ns)} |"
        )
    L.append("")
    L.append(f"## Streaming chat ({prm['st_concurrency']} concurrent streams)")
    L.append("")
    L.append(
        "| target | ok | [DONE] | errors | TTFB p50 ms | TTFB p99 ms | TTFB p99 per round ms | TTFT p50 ms | "
        "TTFT p99 ms | stream duration p50 ms | CPU s / 1k streams | outside load |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        st = r.st
        L.append(
            f"| {name} | {st.get('ok')} | {st.get('done')} | {st.get('errors')} | {_f(st.get('ttfb_p50_ms'))} | "
            f"{_f(st.get('ttfb_p99_ms'))} | {_rounds(st)} | {_f(st.get('ttft_p50_ms'))} | "
            f"{_f(st.get('ttft_p99_ms'))} | {_f(st.get('lat_p50_ms'))} | {_f(cpu_per(st, 1_000), 3)} | "
            f"{_pct_s(st)} |"
        )
    d = results.get("direct")
    added_rows = []
    for name, r in results.items():
        st = r.st
        if not d or name == "direct" or d.st.get("ttfb_p50_ms") is None or st.get("ttfb_p50_ms") is None:
            continue

        def diff(k: str) -> float | None:
            a, b = st.get(k), d.st.get(k)
            return None if a is None or b is None else a - b

        added_rows.append(
            f"| {name} | {_f(diff('ttfb_p50_ms'))} | {_f(diff('ttfb_p99_ms'))} | "
            f"{_f(added_p99_paired(st, d.st))} | {_f(diff('ttft_p50_ms'))} | {_f(diff('ttft_p99_ms'))} | "
            f"{_f(added_p99_paired(st, d.st, 'round_ttft_p99_ms'))} |"
        )
    if added_rows:
        L.append("")
        L.append("Added versus direct (ms):")
        L.append("")
        L.append(
            "| target | TTFB p50 | TTFB p99 | TTFB p99, median of rounds | TTFT p50 | TTFT p99 | "
            "TTFT p99, median of rounds |"
        )
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        L.extend(added_rows)
    slow = [(n, r.slow) for n, r in results.items() if r.slow]
    if slow:
        L.append("")
        L.append(f"## {prm['slow_streams']:,} concurrent slow streams")
        L.append("")
        L.append(
            "| target | [DONE] | errors | max open at once | RSS before MB | RSS peak MB | KB / stream | "
            "CPU s / 1k streams | outside load |"
        )
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, s in slow:
            L.append(
                f"| {name} | {s.get('done')}/{prm['slow_streams']} | {s.get('errors')} | {s.get('open_max')} | "
                f"{s['rss_before_kb'] / 1024:.1f} | {s['rss_peak_kb'] / 1024:.1f} | "
                f"{_f(s.get('rss_per_stream_kb'), 1)} | {_f(cpu_per(s, 1_000), 3)} | {_pct_s(s)} |"
            )
    if checks:
        L.append("")
        tr = info.get("translated") or {}
        if tr:
            L.append("## Translated streams")
            L.append("")
            L.append(
                f"One relay serving two channels, {prm['st_streams']:,} streams each at 50 concurrent: *passthrough* "
                "(an openai channel: events forwarded as they are) and *translated* (an anthropic channel: each "
                "Anthropic event parsed and rewritten as OpenAI chunks). Frames = SSE events the client receives "
                "per stream."
            )
            L.append("")
            L.append("| stream path | streams | frames / stream | relay CPU s / 1k frames |")
            L.append("|---|---:|---:|---:|")
            for label, r in tr.items():
                L.append(f"| {label} | {r.get('streams')} | {r.get('frames')} | {_f(r.get('cpu_per_1k_frames'), 4)} |")
            L.append("")
        L.append("## Targets")
        L.append("")
        for ok, text in checks.values():
            L.append(f"- {_verdict(ok)}: {text}")
    failures = []
    for name, r in results.items():
        for phase, d_ in (("non-stream", r.ns), ("stream", r.st), ("slow", r.slow)):
            if d_ and (d_.get("errors") or d_.get("bad_status") or d_.get("exceptions")):
                failures.append(f"{name} {phase}: status {d_.get('bad_status')} exceptions {d_.get('exceptions')}")
    if failures:
        L.append("")
        L.append("Failed requests:")
        L.append("")
        for f_ in failures:
            L.append(f"- {f_}")
    if info.get("notes"):
        L.append("")
        for note in info["notes"]:
            L.append(f"- {note}")
    L.append("")
    return "\n".join(L)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ledger_rows(db: Path) -> int | None:
    """Rows in the relay's usage ledger (None if it cannot be read)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM usage").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return None


def _check_relay_features(port: int) -> list[str]:
    """Confirm auth and metrics are active on the relay under test."""
    notes = []
    req = urllib.request.Request(
        _url(port), data=b'{"model":"demo","messages":[{"role":"user","content":"hi"}]}',
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        status = f"error {e}"
    notes.append(f"relay without client key answers {status} (auth on)")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read()
            notes.append(f"relay GET /metrics answers {r.status} ({len(body)} bytes)")
    except urllib.error.HTTPError as e:
        notes.append(f"relay GET /metrics answers {e.code}")
    except OSError as e:
        notes.append(f"relay GET /metrics failed: {e}")
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description="Relay benchmark suite")
    ap.add_argument("--quick", action="store_true", help="fewer requests (about a minute)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="report path (default: bench/RESULTS.md)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of direct,baseline,relay")
    ap.add_argument("--no-slow", action="store_true", help="skip the slow-stream memory phase")
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=N",
        help="override a parameter, e.g. --set slow_streams=2000 (names: %s)" % ", ".join(FULL),
    )
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown targets: {bad}")
    prm = dict(QUICK if args.quick else FULL)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in prm or not value.lstrip("-").isdigit():
            ap.error(f"--set {item}: expected NAME=INTEGER with NAME one of {', '.join(prm)}")
        prm[name] = int(value)

    _raise_nofile()
    if CPU_AUX is not None:
        os.sched_setaffinity(0, {CPU_AUX})
    t0 = time.monotonic()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    def log(msg: str) -> None:
        print(f"{time.monotonic() - t0:6.1f}s {msg}", flush=True)

    if CPU_SUT is None:
        log("warning: fewer than 2 CPUs available, running without CPU pinning")

    results: dict[str, TargetResult] = {}
    translated: dict = {}
    notes: list[str] = []
    started: list[Proc] = []
    interrupted = False

    def on_term(signum, frame):  # turn SIGTERM into a clean shutdown of what we started
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        logdir = Path(tmp)
        try:
            fake = start_fake(logdir, "fake", prm["st_chunks"], prm["st_chunk_delay_ms"])
            started.append(fake)
            WATCH_PIDS[:] = [fake.pid]
            log(f"fake upstream pid {fake.pid} on :{fake.port} (CPU {CPU_AUX})")
            tl: list[Target] = []
            relay_proc: tuple[Proc, str] | None = None
            for t in (x for x in TARGETS if x in targets):
                if t == "direct":
                    tl.append(Target(t, fake.port, UPSTREAM_KEY, fake.pid))
                    continue
                if t == "baseline":
                    srv = start_baseline(logdir, "baseline", fake)
                    tl.append(Target(t, srv.port, UPSTREAM_KEY, srv.pid))
                elif t in ("relay", "relay+limits"):
                    # one relay process: the unlimited key, then a key with rate limits on the same process
                    if relay_proc is None:
                        relay_proc = start_relay(logdir, "relay", fake)
                        started.append(relay_proc[0])
                        notes += _check_relay_features(relay_proc[0].port)
                    srv, limited = relay_proc
                    tl.append(Target(t, srv.port, CLIENT_KEY if t == "relay" else limited, srv.pid))
                    log(f"{t} pid {srv.pid} on :{srv.port} (CPU {CPU_SUT})")
                    continue
                else:
                    if not redis_reachable():
                        notes.append(f"relay+redis not measured: no Redis at {REDIS_URL}")
                        continue
                    srv, limited = start_relay(logdir, "relay-redis", fake, redis=True)
                    tl.append(Target(t, srv.port, limited, srv.pid))
                started.append(srv)
                log(f"{t} pid {srv.pid} on :{srv.port} (CPU {CPU_SUT})")
            results = bench_interleaved(tl, prm, log)
            for p in reversed(started):
                p.stop()
            started.clear()
            if "relay" in targets:
                rows = ledger_rows(logdir / "relay.db")
                # the relay and relay+limits targets share one relay process and its ledger
                shared = [results[t] for t in ("relay", "relay+limits") if t in results]
                sent = sum(r.ns.get("ok", 0) + r.st.get("ok", 0) for r in shared)
                warm = len(shared) * (prm["ns_warmup"] + prm["st_warmup"] + prm["rounds"] * prm["round_warmup"] * (
                    prm["ns_concurrency"] + prm["st_concurrency"]))
                notes.append(
                    f"relay ledger holds {rows} usage rows after the run ({sent} measured requests "
                    f"+ {warm} warm-up requests sent, relay and relay+limits together)"
                )

            slow_targets = [t for t in ("baseline", "relay") if t in targets] if not args.no_slow else []
            if slow_targets:
                slow_fake = start_fake(logdir, "fake-slow", prm["slow_chunks"], prm["slow_chunk_delay_ms"])
                started.append(slow_fake)
                WATCH_PIDS[:] = [slow_fake.pid]
                log(f"slow fake upstream pid {slow_fake.pid} on :{slow_fake.port}")
                for t in slow_targets:
                    if t == "baseline":
                        srv = start_baseline(logdir, "baseline-slow", slow_fake)
                        key = UPSTREAM_KEY
                    else:
                        srv, _ = start_relay(logdir, "relay-slow", slow_fake)
                        key = CLIENT_KEY
                    started.append(srv)
                    try:
                        results[t].slow = bench_slow(t, srv.port, key, srv.pid, prm, log)
                    finally:
                        srv.stop()
                        started.remove(srv)
            if "relay" in targets:
                translated = bench_translated(logdir, prm, log)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted")
        except RuntimeError as e:
            notes.append(f"run aborted: {str(e).splitlines()[0]}")
            log(f"error: {e}")
        finally:
            for p in reversed(started):
                p.stop()

    if interrupted:
        return 130
    wall = time.monotonic() - t0
    foreign = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    notes.append(
        f"other processes on the machine used about {max(foreign, 0.0):.0f} CPU s during the "
        f"{wall:.0f} s run ({max(foreign, 0.0) / (wall * NPROC) * 100:.0f}% of {NPROC} CPUs); "
        "outside load makes latency figures noisier"
    )
    micro = run_micro() if any(t.startswith("relay") for t in targets) else {}
    checks = relay_checks(results, prm, micro)
    info = {"date": date, "cpu_model": _cpu_model(), "wall_s": time.monotonic() - t0, "notes": notes,
            "translated": translated}
    report = render(results, prm, args.quick, checks, info)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print()
    for ok, text in checks.values():
        print(f"{_verdict(ok)}: {text}")
    log(f"wrote {out}")
    if any(n.startswith("run aborted") for n in notes):
        return 1
    return 0 if all(ok is not False for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
