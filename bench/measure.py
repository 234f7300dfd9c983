"""One load-generator run against a process under test, and what it measured.

`run_load` starts bench/load.py as its own process (on the auxiliary CPU), reads the CPU time and peak RSS
of the process under test (and its children) right before and right after the measured requests, and
estimates the CPU that processes outside the benchmark used meanwhile. `merge` pools the rounds of one
target.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from bench.procs import (
    CPU_AUX,
    NPROC,
    PY,
    ROOT,
    WATCH_PIDS,
    cpu_seconds,
    machine_busy_seconds,
    own_cpu_seconds,
    preexec,
    process_tree,
    rss_kb,
)

__all__ = ["Target", "TargetResult", "brief", "fmt", "merge", "outside_pct", "pct", "run_load"]


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
    api: str = "chat",
    duration: float = 0.0,
) -> dict:
    """Run one load-generator process; measure CPU and peak RSS of the process under test.

    With `warmup`, the load generator first sends that many unrecorded requests over the same
    keep-alive connections; the counters are read after them, right before the measured requests.
    `api` is the request body bench/load.py sends ("chat" or "responses"; `url` must be its endpoint).
    `duration` > 0 bounds a closed-loop run in time (no measured request starts after it).
    """
    argv = [
        PY, "-m", "bench.load", "--url", url, "--key", key, "--mode", mode,
        "--requests", str(requests), "--concurrency", str(concurrency), "--ramp", str(ramp),
        "--stagger", str(stagger), "--warmup", str(warmup), "--model", model,
        "--api", api, "--duration", str(duration),
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
            preexec_fn=preexec(CPU_AUX),
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
    cpu_after = cpu_seconds(process_tree(sut_pid)) if tree and sut_pid else 0.0
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
    rs: dict = field(default_factory=dict)  # Responses API streams (POST /v1/responses), relay only
    sat_ns: dict = field(default_factory=dict)  # saturated closed loop, non-stream
    sat_st: dict = field(default_factory=dict)  # saturated closed loop, stream


@dataclass
class Target:
    name: str
    port: int
    key: str
    pid: int  # the process under test
    responses: bool = False  # also stream POST /v1/responses in the stream rounds (beside chat)


def merge(rounds: list[dict]) -> dict:
    """Pool the rounds of one target: counts and CPU summed, percentiles over all samples."""
    out: dict = {"rounds": len(rounds), "concurrency": rounds[0].get("concurrency"), "ok": 0, "errors": 0, "elapsed_s": 0.0, "cpu_s": 0.0,
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
    out["lat_p50_ms"] = pct(lat, 50)
    out["lat_p99_ms"] = pct(lat, 99)
    out["round_p99_ms"] = [r.get("lat_p99_ms") for r in rounds]
    out["round_cpu_per"] = [r["cpu_s"] / r["ok"] if r.get("ok") and "cpu_s" in r else None for r in rounds]
    if stream:
        out["ttfb_p50_ms"] = pct(ttfb, 50)
        out["ttfb_p99_ms"] = pct(ttfb, 99)
        out["round_p99_ms"] = [r.get("ttfb_p99_ms") for r in rounds]
        out["round_p50_ms"] = [r.get("ttfb_p50_ms") for r in rounds]
        out["ttft_p50_ms"] = pct(ttft, 50)
        out["ttft_p99_ms"] = pct(ttft, 99)
        out["round_ttft_p99_ms"] = [r.get("ttft_p99_ms") for r in rounds]
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))]


def brief(r: dict) -> str:
    """One log line for a load run or a pooled phase."""
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


def fmt(v: object, nd: int = 2) -> str:
    """A figure for the report: `nd` decimals for a float, n/a for None."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def outside_pct(r: dict) -> float:
    """CPU used by processes outside the benchmark, in % of all CPUs, during the phase."""
    return r["outside_cpu_s"] / (r["wall_s"] * NPROC) * 100 if r.get("wall_s") else 0.0
