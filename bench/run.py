"""Benchmark suite: direct upstream vs. minimal aiohttp proxy vs. the relay, alone and scaled out.

    python -m bench.run [--quick] [--out bench/RESULTS.md] [--targets direct,baseline,relay,...]
                        [--no-slow] [--no-workers] [--phases saturated,...] [--set NAME=N ...]

Starts every process itself on 127.0.0.1 (fake upstreams, baseline proxy, relays, load generators), pins
the process under test to CPU 0 and everything else to CPU 1, measures, stops what it started (by PID),
removes the PostgreSQL database and Redis keys it created, and writes a Markdown report.

Phases (bench/phases.py, bench/workers.py):
  * non-stream chat at a fixed request rate and stream chat at 100 concurrent streams, in rounds that
    alternate between the targets: latency, TTFB, CPU s of the process under test per request; the relay
    also streams POST /v1/responses (passthrough) beside its chat streams in the same rounds;
  * saturated (direct, baseline, relay): 50 non-stream clients, then 100 stream clients in a closed loop
    (each sends its next request as soon as the last answer ended), in rounds alternating between them;
  * (baseline, relay; restarted against a slow fake) N concurrent slow streams: RSS per open stream;
  * translated streams: relay CPU per stream frame, chat and Responses, on openai (passthrough), openai
    `responses: false` and anthropic channels;
  * `relay serve --workers 1` and `--workers 2`: CPU per request over all processes, memory per process.
The checks are in bench/checks.py, the report in bench/report.py. Exit status 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.checks import relay_checks, run_micro, verdict
from bench.measure import Target, TargetResult
from bench.phases import SATURATED_TARGETS, bench_interleaved, bench_saturated, bench_slow, bench_translated
from bench.procs import (
    CPU_AUX,
    CPU_SUT,
    NPROC,
    ROOT,
    WATCH_PIDS,
    Proc,
    machine_busy_seconds,
    own_cpu_seconds,
    raise_nofile,
    start_baseline,
    start_fake,
)
from bench.relays import (
    CLIENT_KEY,
    PG_URL,
    REDIS_URL,
    UPSTREAM_KEY,
    Scratch,
    check_relay_features,
    ledger_rows,
    mask,
    redis_reachable,
    start_relay,
)
from bench.report import cpu_model, render
from bench.workers import measure_workers

__all__ = ["FULL", "PHASES", "QUICK", "TARGETS", "main"]

FULL = {
    "ns_requests": 20_000,
    "ns_concurrency": 50,
    # non-stream requests start at this fixed rate for every target: a proxy's CPU per request depends
    # on how hard it is driven (batching in the event loop), so every target is driven alike. 800/s keeps
    # the relay's one core below saturation on a slow 2-core VM (about 0.9 ms of CPU per request there);
    # a saturated target queues, and its latency and CPU figures then measure the queue, not the relay.
    "ns_rate": 800,
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
    # --workers 1 and 2, a relay started afresh per run: 2 x 3 runs of about 10 s
    "wk_requests": 6_000,
    "wk_rate": 1_000,
    "wk_concurrency": 50,
    "wk_rounds": 3,
    # saturated closed loop: clients send their next request as soon as the last answer ended; per target and
    # round a fixed count, each run stopped after sat_seconds at most (about 4 s and 3 s at the relay's pace)
    "sat_ns_requests": 5_000,
    "sat_ns_concurrency": 50,
    "sat_st_streams": 1_000,
    "sat_st_concurrency": 100,
    "sat_rounds": 4,
    "sat_seconds": 20,
}
QUICK = {
    **FULL,
    "ns_requests": 3_000,
    "ns_warmup": 300,
    "st_streams": 500,
    "st_warmup": 100,
    "slow_streams": 1_000,
    "rounds": 2,
    "wk_requests": 2_000,
    "wk_rounds": 1,
    "sat_rounds": 2,
}

TARGETS = ("direct", "baseline", "relay", "relay+limits", "relay+probes", "relay+redis", "relay+pg")
# relay+probes: the relay with health probes of its 3 accounts every 0.5 s (6 probes a second, 100x the
# default schedule's rate for 3 accounts), against relay (every 60 s): relay CPU per request with and without.
PROBES_EXTRA = "health: {interval: 0.5}\n"
# in the order they run; --phases picks some (`--phases saturated`: the closed loop alone, about 2 minutes)
PHASES = ("interleaved", "saturated", "slow", "translated", "workers")
Log = Callable[[str], None]


RESULTS = ROOT / "bench" / "RESULTS.md"
# a hand-written section of RESULTS.md (figures measured before and after a change) that a new report keeps
KEPT_HEADING = "## Saturated closed loop: before and after"


def kept_section(path: Path) -> str:
    """The KEPT_HEADING section of the report at `path` (up to the next `## ` heading), or ''."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(KEPT_HEADING)
    if at < 0:
        return ""
    end = old.find("\n## ", at + len(KEPT_HEADING))
    return "\n" + old[at:end if end >= 0 else len(old)].rstrip() + "\n"


def _pg_relay(logdir: Path, fake: Proc, scratch: Scratch) -> tuple[Proc, str]:
    """The scaled-out relay: PostgreSQL store and Redis shared state of the run's own, a key with a balance."""
    database = scratch.create_database()
    extra = "limits: {backend: redis, redis_url: %s, prefix: %s}\n" % (
        json.dumps(REDIS_URL), json.dumps(scratch.redis_prefix()))
    return start_relay(logdir, "relay-pg", fake, database=database, extra=extra, key_args=("--quota", "1000000"))


def start_targets(
    targets: list[str], logdir: Path, fake: Proc, scratch: Scratch, started: list[Proc], notes: list[str],
    unmeasured: dict[str, str], log: Log,
) -> list[Target]:
    """Start the process under test of every target asked for (appended to `started` as they start)."""
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
                notes += check_relay_features(relay_proc[0].port)
            srv, limited = relay_proc
            tl.append(Target(t, srv.port, CLIENT_KEY if t == "relay" else limited, srv.pid, responses=t == "relay"))
            log(f"{t} pid {srv.pid} on :{srv.port} (CPU {CPU_SUT})")
            continue
        elif t == "relay+probes":
            srv, _ = start_relay(logdir, "relay-probes", fake, extra=PROBES_EXTRA)
            tl.append(Target(t, srv.port, CLIENT_KEY, srv.pid))
        else:
            if not redis_reachable():
                unmeasured[t] = f"no Redis at {mask(REDIS_URL)}"
                notes.append(f"{t} not measured: {unmeasured[t]}")
                continue
            if t == "relay+redis":
                extra = "limits: {backend: redis, redis_url: %s, prefix: %s}\n" % (
                    json.dumps(REDIS_URL), json.dumps(scratch.redis_prefix()))
                srv, limited = start_relay(logdir, "relay-redis", fake, extra=extra)
                tl.append(Target(t, srv.port, limited, srv.pid))
            else:
                try:
                    srv, funded = _pg_relay(logdir, fake, scratch)
                except Exception as e:  # noqa: BLE001 - asyncpg's errors, OSError: the target is skipped
                    if scratch.pg_url is not None:
                        raise  # the database exists: a relay that cannot run on it is a failure, not a skip
                    unmeasured[t] = f"no PostgreSQL at {mask(PG_URL)}: {str(e).splitlines()[0] if str(e) else e!r}"
                    notes.append(f"{t} not measured: {unmeasured[t]}")
                    continue
                tl.append(Target(t, srv.port, funded, srv.pid))
        started.append(srv)
        log(f"{t} pid {srv.pid} on :{srv.port} (CPU {CPU_SUT})")
    return tl


def ledger_notes(logdir: Path, results: dict[str, TargetResult], prm: dict, scratch: Scratch) -> list[str]:
    """What the relays wrote to their ledgers (read after they stopped, so everything is flushed)."""
    notes = []
    # warm-up requests sent to each target: the phase's own, then a few per connection at each round's start
    warm = prm["ns_warmup"] + prm["st_warmup"] + prm["rounds"] * prm["round_warmup"] * (
        prm["ns_concurrency"] + prm["st_concurrency"])
    shared = [results[t] for t in ("relay", "relay+limits") if t in results]
    if shared:
        rows = ledger_rows(logdir / "relay.db")
        # the relay and relay+limits targets share one relay process and its ledger
        sent = sum(r.ns.get("ok", 0) + r.st.get("ok", 0) + r.rs.get("ok", 0) for r in shared)
        # the relay's Responses streams have warm-ups of their own, as its chat streams do
        # (and one chat and one Responses stream that count the frames of each)
        rs_warm = prm["st_warmup"] + prm["rounds"] * prm["round_warmup"] * prm["st_concurrency"] + 2
        warm_all = len(shared) * warm + sum(rs_warm for r in shared if r.rs)
        sat = results.get("relay")
        if sat is not None and sat.sat_ns:  # the saturated phase ran on the same relay process
            sent += sat.sat_ns.get("ok", 0) + sat.sat_st.get("ok", 0)
            warm_all += prm["ns_warmup"] + prm["st_warmup"] + prm["sat_rounds"] * prm["round_warmup"] * (
                prm["sat_ns_concurrency"] + prm["sat_st_concurrency"])
        notes.append(
            f"relay ledger holds {rows} usage rows after the run ({sent} measured requests "
            f"+ {warm_all} warm-up requests sent, relay and relay+limits together, Responses streams and the "
            "saturated phase included)"
        )
    pg = results.get("relay+pg")
    book = scratch.ledger() if pg else None
    if pg and book:
        sent = pg.ns.get("ok", 0) + pg.st.get("ok", 0)
        notes.append(
            f"relay+pg ledger (PostgreSQL) holds {book['rows']} usage rows after the run ({sent} measured requests "
            f"+ {warm} warm-up requests sent); the key's spent ${book['spent_usd']:.6f}, the ledger's sum "
            f"${book['cost_usd']:.6f}"
        )
    return notes


def run_phases(args: argparse.Namespace, targets: list[str], prm: dict, logdir: Path, scratch: Scratch,
               started: list[Proc], state: dict, log: Log) -> None:
    """Every phase in order; what they measured goes into `state` as soon as each one ends."""
    notes, unmeasured = state["notes"], state["unmeasured"]
    fake = start_fake(logdir, "fake", prm["st_chunks"], prm["st_chunk_delay_ms"])
    started.append(fake)
    WATCH_PIDS[:] = [fake.pid]
    log(f"fake upstream pid {fake.pid} on :{fake.port} (CPU {CPU_AUX})")
    phases = args.phases
    if "interleaved" not in phases:  # the saturated phase needs only these
        targets = [t for t in targets if t in SATURATED_TARGETS]
    tl = start_targets(targets, logdir, fake, scratch, started, notes, unmeasured, log)
    if "interleaved" in phases:
        results = state["results"] = bench_interleaved(tl, prm, log)
    else:
        results = state["results"] = {t.name: TargetResult(t.name) for t in tl}
    if "saturated" in phases:
        for name, sat in bench_saturated(tl, prm, log).items():
            results[name].sat_ns, results[name].sat_st = sat["ns"], sat["st"]
    for p in reversed(started):
        p.stop()
    started.clear()
    if "interleaved" in phases:
        notes += ledger_notes(logdir, results, prm, scratch)

    slow_targets = [t for t in ("baseline", "relay") if t in targets] if "slow" in phases else []
    if slow_targets:
        slow_fake = start_fake(logdir, "fake-slow", prm["slow_chunks"], prm["slow_chunk_delay_ms"])
        started.append(slow_fake)
        WATCH_PIDS[:] = [slow_fake.pid]
        log(f"slow fake upstream pid {slow_fake.pid} on :{slow_fake.port}")
        for t in slow_targets:
            if t == "baseline":
                srv, key = start_baseline(logdir, "baseline-slow", slow_fake), UPSTREAM_KEY
            else:
                srv, _ = start_relay(logdir, "relay-slow", slow_fake)
                key = CLIENT_KEY
            started.append(srv)
            try:
                results[t].slow = bench_slow(t, srv.port, key, srv.pid, prm, log)
            finally:
                srv.stop()
                started.remove(srv)
        slow_fake.stop()
        started.remove(slow_fake)
    if "relay" in targets:
        if "translated" in phases:
            state["translated"] = bench_translated(logdir, prm, log)
        if "workers" not in phases:
            if "interleaved" in phases:
                unmeasured["workers"] = "--no-workers" if args.no_workers else "not in --phases"
        else:
            log(f"workers: {prm['wk_rounds']} rounds x --workers 1, 2, {prm['wk_requests']} requests each")
            state["workers"] = measure_workers(logdir, [1, 2], prm["wk_requests"], prm["wk_rate"],
                                               prm["wk_concurrency"], prm["wk_rounds"], log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description="Relay benchmark suite")
    ap.add_argument("--quick", action="store_true", help="fewer requests (about two minutes)")
    ap.add_argument("--out", default=None,
                    help="report path (default: bench/RESULTS.md when every phase runs; with --phases a subset "
                         "the report is printed unless --out is given)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of %s" % ",".join(TARGETS))
    ap.add_argument("--no-slow", action="store_true", help="skip the slow-stream memory phase")
    ap.add_argument("--no-workers", action="store_true", help="skip the --workers 1 / 2 phase")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help="comma list of %s (default: all)" % ",".join(PHASES))
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=N",
        help="override a parameter, e.g. --set slow_streams=2000 (names: %s)" % ", ".join(FULL),
    )
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown targets: {bad}")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if [p for p in phases if p not in PHASES] or not phases:
        ap.error(f"--phases {args.phases}: expected a comma list of {', '.join(PHASES)}")
    args.phases = [p for p in phases if not ((p == "slow" and args.no_slow) or (p == "workers" and args.no_workers))]
    prm = dict(QUICK if args.quick else FULL)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in prm or not value.lstrip("-").isdigit():
            ap.error(f"--set {item}: expected NAME=INTEGER with NAME one of {', '.join(prm)}")
        prm[name] = int(value)

    raise_nofile()
    if CPU_AUX is not None:
        os.sched_setaffinity(0, {CPU_AUX})
    t0 = time.monotonic()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    def log(msg: str) -> None:
        print(f"{time.monotonic() - t0:6.1f}s {msg}", flush=True)

    if CPU_SUT is None:
        log("warning: fewer than 2 CPUs available, running without CPU pinning")

    state: dict = {"results": {}, "translated": {}, "workers": None, "notes": [], "unmeasured": {}}
    notes: list[str] = state["notes"]
    started: list[Proc] = []
    scratch = Scratch()
    interrupted = False

    def on_term(signum: int, frame: object) -> None:  # turn SIGTERM into a clean shutdown of what we started
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        try:
            run_phases(args, targets, prm, Path(tmp), scratch, started, state, log)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted")
        except RuntimeError as e:
            notes.append(f"run aborted: {str(e).splitlines()[0]}")
            log(f"error: {e}")
        finally:
            for p in reversed(started):
                p.stop()
            notes += scratch.drop()

    if interrupted:
        return 130
    wall = time.monotonic() - t0
    foreign = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    notes.append(
        f"other processes on the machine used about {max(foreign, 0.0):.0f} CPU s during the "
        f"{wall:.0f} s run ({max(foreign, 0.0) / (wall * NPROC) * 100:.0f}% of {NPROC} CPUs); "
        "outside load makes latency figures noisier"
    )
    micro = run_micro() if "interleaved" in args.phases and any(t.startswith("relay") for t in targets) else {}
    checks = relay_checks(state["results"], prm, micro, state["workers"], state["unmeasured"])
    info = {"date": date, "cpu_model": cpu_model(), "wall_s": time.monotonic() - t0, "notes": notes,
            "translated": state["translated"], "workers": state["workers"]}
    report = render(state["results"], prm, args.quick, checks, info)
    out = Path(args.out) if args.out else RESULTS if set(PHASES) <= set(args.phases) else None
    if out is None:
        print(report)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + kept_section(out))
    print()
    for ok, text in checks.values():
        print(f"{verdict(ok)}: {text}")
    if out is not None:
        log(f"wrote {out}")
    if any(n.startswith("run aborted") for n in notes):
        return 1
    return 0 if all(ok is not False for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
