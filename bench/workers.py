"""`relay serve --workers N`: CPU per request and memory per worker, for N = 1 and 2 (or as given).

    python -m bench.workers [--workers 1,2] [--requests 6000] [--rate 1000] [--concurrency 50] [--rounds 2]

For each N: starts the bundled fake upstream and `python -m relay serve --workers N` on free 127.0.0.1 ports
(the relay pinned to one CPU, everything else to the other, as bench/run.py does), drives a fixed number of
non-stream chat requests at a fixed rate (the same for every N: CPU per request depends on how hard a
process is driven), then reads, for the parent and each worker:

  * CPU seconds per request, summed over every relay process (parent and workers), from /proc/PID/stat;
  * RSS, PSS and private memory (Private_Clean + Private_Dirty) from /proc/PID/smaps_rollup.

Rounds alternate between the Ns (a relay started afresh each time); the checked CPU ratio is the median of
same-round ratios, as in the other CPU checks. Also a phase of `make bench` (bench/run.py, `measure_workers`);
run alone it prints the table and the checks. Stops everything it started, by PID. Loopback only; bounded
(each load run has a timeout).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.checks import verdict, workers_checks
from bench.measure import outside_pct, run_load
from bench.procs import WATCH_PIDS, Proc, children, memory, start_fake, url
from bench.relays import start_relay

__all__ = ["measure_workers", "one_run", "summarize", "table"]


def _start(logdir: Path, fake: Proc, workers: int, tag: str) -> tuple[Proc, str]:
    relay, key = start_relay(logdir, f"relay-{tag}", fake, key_args=None, workers=workers)
    deadline = time.monotonic() + 30
    while workers > 1 and len(children(relay.pid)) < workers:  # every worker listening, not only the first
        if time.monotonic() > deadline:
            relay.stop()
            raise RuntimeError(f"{workers} workers did not start:\n{relay.log_tail()}")
        time.sleep(0.1)
    time.sleep(0.5)
    return relay, key


def one_run(logdir: Path, fake: Proc, workers: int, tag: str, requests: int, rate: float,
            concurrency: int) -> dict:
    """One relay with `workers` workers, started afresh: CPU per request, then memory per process."""
    relay, key = _start(logdir, fake, workers, tag)
    try:
        r = run_load(url(relay.port), key, "nonstream", requests, concurrency, relay.pid,
                     warmup=4 * concurrency, ramp=rate, timeout=requests / rate * 4 + 60)
        procs = {"parent": relay.pid} if workers > 1 else {"the one process": relay.pid}
        procs.update({f"worker {i}": pid for i, pid in enumerate(children(relay.pid))})
        mem = {name: memory(pid) for name, pid in procs.items()}
    finally:
        relay.stop()
    ok = r.get("ok") or 0
    return {"workers": workers, "ok": ok, "errors": r.get("errors") or 0, "cpu_s": r["cpu_s"],
            "outside_cpu_s": r.get("outside_cpu_s", 0.0), "wall_s": r.get("wall_s", 0.0),
            "cpu_ms_per_req": r["cpu_s"] / ok * 1000 if ok else None, "memory": mem}


def summarize(counts: list[int], runs: dict[int, list[dict]], **params: float) -> dict:
    """Medians and same-round ratios over the runs, memory of each N's last run (pure)."""
    cpu_ms: dict[int, float | None] = {}
    ratio: dict[int, float | None] = {}
    pss_total: dict[int, float] = {}
    for n in counts:
        per = [r["cpu_ms_per_req"] for r in runs[n] if r["cpu_ms_per_req"] is not None]
        cpu_ms[n] = statistics.median(per) if per else None
        pss_total[n] = sum(m["pss_mb"] for m in runs[n][-1]["memory"].values())
        if 1 in runs and n != 1:
            pairs = [a["cpu_ms_per_req"] / b["cpu_ms_per_req"] for a, b in zip(runs[n], runs[1])
                     if a["cpu_ms_per_req"] and b["cpu_ms_per_req"]]
            ratio[n] = statistics.median(pairs) if pairs else None
    added = {n: (pss_total[n] - pss_total[1]) / (n - 1) for n in counts if n > 1 and 1 in pss_total}
    return {
        "counts": counts, "runs": runs, "cpu_ms": cpu_ms, "ratio": ratio, "pss_total": pss_total,
        "added_pss_mb": added, "memory": {n: runs[n][-1]["memory"] for n in counts},
        "errors": {n: sum(r["errors"] for r in runs[n]) for n in counts},
        "outside_pct": {n: statistics.median(outside_pct(r) for r in runs[n]) for n in counts}, **params,
    }


def measure_workers(logdir: Path, counts: list[int], requests: int, rate: float, concurrency: int,
                    rounds: int, log: Callable[[str], None]) -> dict:
    """The workers phase: `rounds` rounds alternating between the worker counts, against a fake of its own."""
    fake = start_fake(logdir, "fake-workers", chunks=20, chunk_delay_ms=0)
    watched = WATCH_PIDS[:]
    WATCH_PIDS[:] = [fake.pid]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    try:
        for rnd in range(rounds):
            for n in counts:
                r = one_run(logdir, fake, n, f"{n}w{rnd}", requests, rate, concurrency)
                runs[n].append(r)
                log(f"  [workers {n}] round {rnd + 1}: {r['ok']} ok, {r['errors']} errors, "
                    f"{r['cpu_ms_per_req'] or 0:.3f} ms CPU/request (other load on the machine: "
                    f"{r['outside_cpu_s'] / max(r['wall_s'], 1e-9):.2f} CPUs)")
    finally:
        fake.stop()
        WATCH_PIDS[:] = watched
    return summarize(counts, runs, requests=requests, rate=rate, concurrency=concurrency, rounds=rounds)


def table(summary: dict) -> list[str]:
    """Markdown rows: per worker count, the CPU per request and each process's RSS, PSS and private memory."""
    out = ["| workers | CPU ms / request (all processes, median) | outside load | process | RSS MB | PSS MB | "
           "private MB |", "|---|---:|---:|---|---:|---:|---:|"]
    for n in summary["counts"]:
        cpu = summary["cpu_ms"][n]
        for i, (name, m) in enumerate(summary["memory"][n].items()):
            lead = (f"| {n} | {'n/a' if cpu is None else f'{cpu:.3f}'} | {summary['outside_pct'][n]:.0f}% "
                    if i == 0 else "| | | ")
            out.append(f"{lead}| {name} | {m['rss_mb']:.1f} | {m['pss_mb']:.1f} | {m['private_mb']:.1f} |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--requests", type=int, default=6000, help="measured requests per run")
    p.add_argument("--rate", type=float, default=1000.0, help="request starts per second")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    prm = p.parse_args()
    counts = [int(n) for n in prm.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="relay-bench-workers-") as tmp:
        summary = measure_workers(Path(tmp), counts, prm.requests, prm.rate, prm.concurrency, prm.rounds,
                                  lambda line: print(line.strip(), file=sys.stderr, flush=True))
    print(f"\n{prm.requests} non-stream requests per run at {prm.rate:.0f}/s, concurrency {prm.concurrency}, "
          f"{prm.rounds} rounds; the relay's processes pinned to one CPU\n")
    print("\n".join(table(summary)))
    print()
    checks = workers_checks(summary)
    for ok, text in checks.values():
        print(f"{verdict(ok)}: {text}")
    return 0 if all(ok is not False for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
