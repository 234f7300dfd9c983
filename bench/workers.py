"""`relay serve --workers N`: CPU per request and memory per worker, for N = 1 and 2 (or as given).

    python -m bench.workers [--workers 1,2] [--requests 6000] [--rate 1000] [--concurrency 50] [--rounds 2]

For each N: starts the bundled fake upstream and `python -m relay serve --workers N` on free 127.0.0.1 ports
(the relay pinned to one CPU, everything else to the other, as bench/run.py does), drives a fixed number of
non-stream chat requests at a fixed rate (the same for every N: CPU per request depends on how hard a
process is driven), then reads, for the parent and each worker:

  * CPU seconds per request, summed over every relay process (parent and workers), from /proc/PID/stat;
  * RSS, PSS and private memory (Private_Clean + Private_Dirty) from /proc/PID/smaps_rollup.

Rounds alternate between the Ns (a relay started afresh each time); the report takes the median CPU per
request. Stops everything it started, by PID. Not part of `make bench`; loopback only; bounded (each load
run has a timeout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.run import CLIENT_KEY, CPU_SUT, PY, Proc, free_port, run_load, start_fake

TARGET_CPU_RATIO = 1.1  # CPU per request with 2 workers (summed) over one worker's
TARGET_ADDED_MB = 40.0  # private memory of each extra worker


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


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
    m = smaps(pid)
    return {"rss_mb": m["Rss"] / 1024, "pss_mb": m["Pss"] / 1024,
            "private_mb": (m["Private_Clean"] + m["Private_Dirty"]) / 1024}


def start_relay(logdir: Path, fake: Proc, workers: int, tag: str) -> Proc:
    port = free_port()
    cfg = logdir / f"relay-{tag}.yaml"
    cfg.write_text(
        "server: {host: 127.0.0.1, port: %d}\n"
        "database: %s\n"
        "client_keys:\n  - {name: bench, key: %s}\n"
        "channels:\n"
        "  - {name: fake, type: openai, base_url: 'http://127.0.0.1:%d/v1', keys: [k1, k2, k3], models: [demo]}\n"
        "prices: {demo: {input: 1, output: 2}}\n"
        "log_level: warning\n" % (port, json.dumps(str(logdir / f"relay-{tag}.db")), CLIENT_KEY, fake.port)
    )
    argv = [PY, "-m", "relay", "serve", "--config", str(cfg), "--port", str(port), "--workers", str(workers)]
    relay = Proc(f"relay-{tag}", argv, CPU_SUT, logdir, port)
    relay.wait_ready("/healthz", timeout=60.0)
    deadline = time.monotonic() + 30
    while workers > 1 and len(children(relay.pid)) < workers:  # every worker listening, not only the first
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers} workers did not start:\n{relay.log_tail()}")
        time.sleep(0.1)
    time.sleep(0.5)
    return relay


def one_run(logdir: Path, fake: Proc, workers: int, tag: str, prm: argparse.Namespace) -> dict:
    relay = start_relay(logdir, fake, workers, tag)
    try:
        url = f"http://127.0.0.1:{relay.port}/v1/chat/completions"
        r = run_load(url, CLIENT_KEY, "nonstream", prm.requests, prm.concurrency, relay.pid,
                     warmup=4 * prm.concurrency, ramp=prm.rate, timeout=prm.requests / prm.rate * 4 + 60)
        procs = {"parent": relay.pid} if workers > 1 else {"the one process": relay.pid}
        procs.update({f"worker {i}": pid for i, pid in enumerate(children(relay.pid))})
        mem = {name: memory(pid) for name, pid in procs.items()}
    finally:
        relay.stop()
    ok = r.get("ok") or 0
    return {"workers": workers, "ok": ok, "errors": r.get("errors"), "cpu_s": r["cpu_s"],
            "outside_cpu_s": r.get("outside_cpu_s", 0.0), "wall_s": r.get("wall_s", 0.0),
            "cpu_ms_per_req": r["cpu_s"] / ok * 1000 if ok else None, "memory": mem}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--requests", type=int, default=6000, help="measured requests per run")
    p.add_argument("--rate", type=float, default=1000.0, help="request starts per second")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    prm = p.parse_args()
    counts = [int(n) for n in prm.workers.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="relay-bench-workers-") as tmp:
        logdir = Path(tmp)
        fake = start_fake(logdir, "fake", chunks=20, chunk_delay_ms=0)
        try:
            for rnd in range(prm.rounds):
                for n in counts:
                    r = one_run(logdir, fake, n, f"{n}w{rnd}", prm)
                    runs[n].append(r)
                    print(f"round {rnd + 1}, {n} worker(s): {r['ok']} ok, {r['errors']} errors, "
                          f"{r['cpu_ms_per_req']:.3f} ms CPU/request (other load on the machine: "
                          f"{r['outside_cpu_s'] / max(r['wall_s'], 1e-9):.2f} CPUs)", file=sys.stderr, flush=True)
        finally:
            fake.stop()

    print(f"\n{prm.requests} non-stream requests per run at {prm.rate:.0f}/s, concurrency {prm.concurrency}, "
          f"{prm.rounds} rounds; the relay's processes pinned to one CPU\n")
    print("| workers | CPU ms / request (all processes, median) | process | RSS MB | PSS MB | private MB |")
    print("|---|---|---|---|---|---|")
    cpu: dict[int, float] = {}
    pss_total: dict[int, float] = {}
    for n in counts:
        cpu[n] = statistics.median(r["cpu_ms_per_req"] for r in runs[n] if r["cpu_ms_per_req"] is not None)
        mem = runs[n][-1]["memory"]
        pss_total[n] = sum(m["pss_mb"] for m in mem.values())
        for i, (name, m) in enumerate(mem.items()):
            lead = f"| {n} | {cpu[n]:.3f} " if i == 0 else "| | "
            print(f"{lead}| {name} | {m['rss_mb']:.1f} | {m['pss_mb']:.1f} | {m['private_mb']:.1f} |")
    print()
    ok = True
    if 1 in counts:
        for n in counts:
            if n == 1:
                continue
            ratio = cpu[n] / cpu[1]
            added = (pss_total[n] - pss_total[1]) / (n - 1)
            worst = max(m["private_mb"] for name, m in runs[n][-1]["memory"].items() if name != "parent")
            print(f"{n} workers: CPU/request {ratio:.2f}x one worker's (target <= {TARGET_CPU_RATIO}x); "
                  f"total PSS {pss_total[n]:.1f} MB vs {pss_total[1]:.1f} MB, {added:.1f} MB per extra worker; "
                  f"largest worker private {worst:.1f} MB (target <= {TARGET_ADDED_MB:.0f} MB)")
            ok = ok and ratio <= TARGET_CPU_RATIO and worst <= TARGET_ADDED_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
