"""The PASS/FAIL checks of a run: pure functions of what the phases measured (plus bench/micro.py).

CPU comparisons between two targets take the median over rounds of the ratio of their CPU per request in
the same round: rounds alternate between targets, so a disturbance of the machine lands on one round of
one target, which the median shrugs off where pooled sums do not.
"""

from __future__ import annotations

import json
import subprocess

from bench.measure import TargetResult, fmt
from bench.procs import CPU_SUT, PY, ROOT, preexec

__all__ = [
    "MAX_ADDED_TTFB_P99_MS",
    "MAX_CPU_RATIO",
    "MAX_PG_CPU_RATIO",
    "MAX_RESPONSES_CPU_RATIO",
    "MAX_RSS_KB_PER_STREAM",
    "MAX_SAT_ADDED_TTFB_P99_MS",
    "MAX_SAT_CPU_RATIO",
    "MAX_WORKERS_CPU_RATIO",
    "MAX_WORKER_PRIVATE_MB",
    "Check",
    "added_p99_paired",
    "cpu_per",
    "cpu_ratio",
    "median",
    "pg_checks",
    "relay_checks",
    "responses_checks",
    "run_micro",
    "saturated_checks",
    "verdict",
    "workers_checks",
]

Check = tuple[bool | None, str]  # (True: PASS, False: FAIL, None: SKIP; the line of the report)

# relay/baseline CPU per non-stream request of the core relay (auth, ledger, metrics; before billing and
# rate limits), from the full run recorded at commit 41a8cb8: billing and the key store may add at most 10 %.
CORE_NS_RATIO = 1.19
MAX_LIMITS_CPU_ADDED = 0.05
# 6 probes/s at ~0.26 ms CPU each (bench/probes.py) is ~1.6 ms per second next to ~800 requests/s: far below
# the rounds' noise, so the bound is the noise's (same-round ratios of two relays vary by a few %)
MAX_PROBES_CPU_RATIO = 1.10
# Targets (all must hold for a pass).
MAX_CPU_RATIO = 1.5
MAX_ADDED_TTFB_P99_MS = 5.0
MAX_RSS_KB_PER_STREAM = 40.0
SLOW_TARGET_STREAMS = 5_000
MAX_PG_CPU_RATIO = 1.15  # relay on PostgreSQL + Redis over relay on SQLite, CPU per non-stream request
MAX_WORKERS_CPU_RATIO = 1.1  # CPU per request with N workers (parent and workers summed) over one worker's
MAX_WORKER_PRIVATE_MB = 40.0  # private memory of each extra worker
# relay CPU per Responses passthrough stream (POST /v1/responses, openai channel) over per chat passthrough stream
MAX_RESPONSES_CPU_RATIO = 1.1
# saturated closed loop (50 non-stream clients, 100 stream clients, flat out): relay over baseline
MAX_SAT_CPU_RATIO = 1.4
MAX_SAT_ADDED_TTFB_P99_MS = 5.0


def median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def added_p99_paired(target: dict, direct: dict, key: str = "round_p99_ms") -> float | None:
    """Median over rounds of (target TTFB p99 - direct TTFB p99 of the same round).

    Rounds of different targets run back to back, so pairing them cancels slow drifts and a
    single disturbed round cannot decide the result.
    """
    a, b = target.get(key) or [], direct.get(key) or []
    return median([x - y for x, y in zip(a, b) if x is not None and y is not None])



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
    return median([x / y for x, y in zip(a.get("round_cpu_per", []), b.get("round_cpu_per", [])) if x and y])


def _added(a: dict, b: dict, key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return None if x is None or y is None else float(x - y)


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else "PASS" if ok else "FAIL"


def run_micro() -> dict:
    """bench/micro.py on the CPU the relay runs on: billing and limits per request, in isolation."""
    out = subprocess.run(
        [PY, "-m", "bench.micro"], cwd=ROOT, capture_output=True, text=True, check=True,
        preexec_fn=preexec(CPU_SUT),
    )
    result: dict = json.loads(out.stdout)
    return result


def relay_checks(
    results: dict[str, TargetResult], prm: dict, micro: dict | None = None, workers: dict | None = None,
    unmeasured: dict[str, str] | None = None,
) -> dict[str, Check]:
    """Pure function of the results: the pass/fail checks of the relay.

    `workers` is bench/workers.py's summary of the workers phase; `unmeasured` names the targets that were
    asked for but could not run, with the reason (their checks are SKIP).
    """
    checks: dict[str, Check] = {}
    base, relay, direct = results.get("baseline"), results.get("relay"), results.get("direct")
    if not relay:
        return checks
    checks.update(saturated_checks(results))
    if not relay.ns and not relay.st:  # the saturated phase alone
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
        f"relay CPU per non-stream request <= {MAX_CPU_RATIO}x baseline: {fmt(q)}x (median of same-round "
        f"ratios; pooled {fmt(r, 3)} vs {fmt(b, 3)} CPU s / 10k requests)",
    )
    q, r, b = ratio(1_000, "st")
    checks["cpu_stream"] = (
        q is not None and q <= MAX_CPU_RATIO and relay.st.get("errors", 1) == 0,
        f"relay CPU per stream <= {MAX_CPU_RATIO}x baseline: {fmt(q)}x (median of same-round ratios; "
        f"pooled {fmt(r, 3)} vs {fmt(b, 3)} CPU s / 1k streams)",
    )
    checks.update(responses_checks(relay))
    added = pooled = added_ttft = None
    if direct and direct.st.get("ttfb_p99_ms") is not None and relay.st.get("ttfb_p99_ms") is not None:
        added = added_p99_paired(relay.st, direct.st)
        pooled = relay.st["ttfb_p99_ms"] - direct.st["ttfb_p99_ms"]
        added_ttft = added_p99_paired(relay.st, direct.st, "round_ttft_p99_ms")
    checks["ttfb"] = (
        added is not None and added <= MAX_ADDED_TTFB_P99_MS and relay.st.get("errors", 1) == 0,
        f"added TTFB p99 <= {MAX_ADDED_TTFB_P99_MS:g} ms at {prm['st_concurrency']} concurrent streams: "
        f"{fmt(added)} ms (median of per-round differences; pooled p99 difference {fmt(pooled)} ms; "
        f"added TTFT p99 {fmt(added_ttft)} ms)",
    )
    relay_us = cpu_per(relay.ns, 1_000_000)  # CPU µs per non-stream request of the relay in this run
    micro = micro or {}
    if relay_us and "billing_and_keys_us_per_request" in micro:
        share = micro["billing_and_keys_us_per_request"] / relay_us
        end_to_end = "" if q_ns is None else (
            f"; end to end {fmt(q_ns)}x baseline (the core's {CORE_NS_RATIO:g}x was measured without the fixed "
            "request rate, so the two are not directly comparable)"
        )
        checks["billing"] = (
            share <= 0.10,
            f"billing and the key store cost <= 10 % of the relay's CPU per request: "
            f"{micro['billing_and_keys_us_per_request']:.2f} µs of {relay_us:.0f} µs = {fmt(share * 100, 1)} % "
            f"(bench/micro.py, in isolation){end_to_end}",
        )
    limited = results.get("relay+limits")
    if limited:
        r_cpu, l_cpu = cpu_per(relay.ns, 10_000), cpu_per(limited.ns, 10_000)
        lr = cpu_ratio(limited.ns, relay.ns)
        if relay_us and "limits_us_per_request" in micro:
            added_cpu = micro["limits_us_per_request"] / relay_us
            end_to_end = "" if lr is None else (
                f"; end to end, relay+limits vs relay: {fmt((lr - 1) * 100, 1)} % (median of same-round ratios; "
                f"pooled {fmt(l_cpu, 3)} vs {fmt(r_cpu, 3)} CPU s / 10k requests)"
            )
            checks["limits_cpu"] = (
                added_cpu <= MAX_LIMITS_CPU_ADDED and limited.ns.get("errors", 1) == 0,
                f"in-process rate limits add <= {MAX_LIMITS_CPU_ADDED * 100:g} % CPU per request: "
                f"{micro['limits_us_per_request']:.2f} µs of {relay_us:.0f} µs = {fmt(added_cpu * 100, 1)} % "
                f"(bench/micro.py, in isolation){end_to_end}",
            )
    probing = results.get("relay+probes")
    if probing:
        pr = cpu_ratio(probing.ns, relay.ns)
        checks["probes_cpu"] = (
            pr is not None and pr <= MAX_PROBES_CPU_RATIO and probing.ns.get("errors", 1) == 0,
            f"health probes every 0.5 s (6/s) add <= {(MAX_PROBES_CPU_RATIO - 1) * 100:g} % relay CPU per request: "
            f"{'n/a' if pr is None else fmt((pr - 1) * 100, 1)} % (median of same-round ratios; pooled "
            f"{fmt(cpu_per(probing.ns, 10_000), 3)} vs {fmt(cpu_per(relay.ns, 10_000), 3)} CPU s / 10k requests)",
        )
    redis = results.get("relay+redis")
    if redis and limited:
        p50, p99 = (_added(redis.ns, limited.ns, k) for k in ("lat_p50_ms", "lat_p99_ms"))
        if p50 is not None and p99 is not None:
            checks["redis_latency"] = (
                redis.ns.get("errors", 1) == 0,
                f"Redis limits backend, added latency vs in-process limits (non-stream, reported): "
                f"p50 {fmt(p50)} ms, p99 {fmt(p99)} ms; "
                f"CPU {fmt(cpu_per(redis.ns, 10_000), 3)} CPU s / 10k requests",
            )
    checks.update(pg_checks(relay, results.get("relay+pg"), (unmeasured or {}).get("relay+pg")))
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
            f"{s.get('done')}/{n} with [DONE], {fmt(per, 1)} KB per stream",
        )
    else:
        checks["rss"] = (None, "slow streams: not measured in this run")
    if workers:
        checks.update(workers_checks(workers))
    elif unmeasured and "workers" in unmeasured:
        checks["workers_cpu"] = (None, f"--workers 2: not measured ({unmeasured['workers']})")
    return checks


def saturated_checks(results: dict[str, TargetResult]) -> dict[str, Check]:
    """The saturated closed loop: relay against baseline (CPU) and against direct (added TTFB p99)."""
    base, relay, direct = results.get("baseline"), results.get("relay"), results.get("direct")
    if not relay or not relay.sat_ns:
        return {}
    checks: dict[str, Check] = {}
    for name, attr, unit, what in (("sat_cpu_nonstream", "sat_ns", 10_000, "request"),
                                   ("sat_cpu_stream", "sat_st", 1_000, "stream")):
        r, b = getattr(relay, attr), getattr(base, attr) if base else {}
        q = cpu_ratio(r, b) if b else None
        ok = q is not None and q <= MAX_SAT_CPU_RATIO and r.get("errors", 1) == 0 and b.get("errors", 1) == 0
        checks[name] = (
            ok,
            f"saturated: relay CPU per {what} <= {MAX_SAT_CPU_RATIO:g}x baseline: {fmt(q)}x (median of same-round "
            f"ratios; pooled {fmt(cpu_per(r, unit), 3)} vs {fmt(cpu_per(b, unit), 3)} CPU s / "
            f"{unit // 1000}k {what}s; {fmt(r.get('rps'), 0)} vs {fmt(b.get('rps'), 0)} {what}s/s)",
        )
    st, dst = relay.sat_st, direct.sat_st if direct else {}
    added = added_p99_paired(st, dst) if dst else None
    base_added = added_p99_paired(base.sat_st, dst) if dst and base and base.sat_st else None
    checks["sat_ttfb"] = (
        added is not None and added <= MAX_SAT_ADDED_TTFB_P99_MS and st.get("errors", 1) == 0
        and st.get("done") == st.get("ok"),
        f"saturated: added TTFB p99 <= {MAX_SAT_ADDED_TTFB_P99_MS:g} ms at {st.get('concurrency', 100)} stream "
        f"clients: {fmt(added)} ms (median of per-round differences with direct; baseline {fmt(base_added)} ms; "
        f"{st.get('done')}/{st.get('ok')} streams ended with [DONE])",
    )
    return checks


def responses_checks(relay: TargetResult) -> dict[str, Check]:
    """Responses passthrough streams against chat passthrough streams of the same relay, round by round.

    A Responses stream carries more events than a chat stream of the same text (its created, in_progress,
    item and part events: 28 against 23 for 20 text pieces here), and the passthrough's work is per event;
    so the check compares CPU per event (the same-round ratio per stream, scaled by the events per stream),
    and the line reports the per-stream ratio beside it. Every Responses stream must also have ended with its
    `response.completed` event (counted by bench/load.py).
    """
    rs, st = relay.rs, relay.st
    if not rs:
        return {}
    q = cpu_ratio(rs, st)
    ok_n, done = rs.get("ok", 0), rs.get("done", 0)
    fr, fc = rs.get("frames"), st.get("frames")
    per_frame = None if q is None or not fr or not fc else q * fc / fr
    ok = (per_frame is not None and per_frame <= MAX_RESPONSES_CPU_RATIO and rs.get("errors", 1) == 0 and ok_n > 0
          and done == ok_n and st.get("errors", 1) == 0)
    return {"responses_cpu": (
        ok,
        f"relay CPU per Responses passthrough stream event (POST /v1/responses, openai channel) <= "
        f"{MAX_RESPONSES_CPU_RATIO:g}x per chat passthrough stream event: {fmt(per_frame)}x ({fr} vs {fc} events "
        f"per stream; per stream {fmt(q)}x, median of same-round ratios; pooled {fmt(cpu_per(rs, 1_000), 3)} vs "
        f"{fmt(cpu_per(st, 1_000), 3)} CPU s / 1k streams; {done}/{ok_n} ended with response.completed, "
        f"{rs.get('errors')} errors)",
    )}


def pg_checks(relay: TargetResult, pg: TargetResult | None, why_not: str | None) -> dict[str, Check]:
    """relay+pg (PostgreSQL store, Redis shared state, a key with a balance) against relay (SQLite)."""
    if pg is None:
        return {} if why_not is None else {
            "pg_cpu": (None, f"relay on PostgreSQL + Redis: not measured ({why_not})")}
    q = cpu_ratio(pg.ns, relay.ns)
    ok = q is not None and q <= MAX_PG_CPU_RATIO and pg.ns.get("errors", 1) == 0 and pg.st.get("errors", 1) == 0
    return {"pg_cpu": (
        ok,
        f"relay on PostgreSQL + Redis CPU per non-stream request <= {MAX_PG_CPU_RATIO:g}x relay on SQLite: "
        f"{fmt(q)}x (median of same-round ratios; pooled {fmt(cpu_per(pg.ns, 10_000), 3)} vs "
        f"{fmt(cpu_per(relay.ns, 10_000), 3)} CPU s / 10k requests)",
    )}


def workers_checks(summary: dict) -> dict[str, Check]:
    """`relay serve --workers N` against one process: CPU per request and each worker's private memory."""
    checks: dict[str, Check] = {}
    for n in summary["counts"]:
        if n == 1 or 1 not in summary["counts"]:
            continue
        q = summary["ratio"].get(n)
        errors = summary["errors"][n] + summary["errors"][1]
        checks[f"workers{n}_cpu"] = (
            q is not None and q <= MAX_WORKERS_CPU_RATIO and errors == 0,
            f"--workers {n} CPU per request (parent and workers summed) <= {MAX_WORKERS_CPU_RATIO:g}x one "
            f"worker's: {fmt(q)}x (median of same-round ratios; {fmt(summary['cpu_ms'][n], 3)} vs "
            f"{fmt(summary['cpu_ms'][1], 3)} CPU ms / request; {errors} errors)",
        )
        workers = {name: m for name, m in summary["memory"][n].items() if name.startswith("worker")}
        worst = max((m["private_mb"] for m in workers.values()), default=None)
        each = ", ".join(f"{name} {m['private_mb']:.1f}" for name, m in workers.items())
        checks[f"workers{n}_memory"] = (
            worst is not None and len(workers) == n and worst <= MAX_WORKER_PRIVATE_MB,
            f"each extra worker's private memory (Private_Clean + Private_Dirty) <= {MAX_WORKER_PRIVATE_MB:g} MB "
            f"with --workers {n}: largest {fmt(worst, 1)} MB ({each or 'no worker found'}); total PSS "
            f"{summary['pss_total'][n]:.1f} MB vs {summary['pss_total'][1]:.1f} MB with one process, "
            f"{fmt(summary['added_pss_mb'].get(n), 1)} MB per extra worker",
        )
    return checks
