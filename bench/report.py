"""The Markdown report of a run (bench/RESULTS.md): method, one table per phase, the checks, notes."""

from __future__ import annotations

import platform

from bench.checks import added_p99_paired, cpu_per, cpu_ratio, verdict
from bench.measure import TargetResult, fmt, outside_pct
from bench.procs import CPU_AUX, CPU_SUT, NPROC
from bench.workers import table

__all__ = ["cpu_model", "render"]


def _rounds(r: dict) -> str:
    return " / ".join(fmt(v, 1) for v in r.get("round_p99_ms", [])) or "n/a"


def _pct_s(r: dict) -> str:
    return f"{outside_pct(r):.0f}%" if r.get("wall_s") else "n/a"


def _workers(summary: dict) -> list[str]:
    return [
        "## Workers",
        "",
        f"`relay serve --workers N`: {summary['requests']:,} non-stream requests per run at {summary['rate']:,.0f}/s, "
        f"concurrency {summary['concurrency']}, {summary['rounds']} rounds; CPU per request summed over every "
        "process of the relay; memory of each process after the load.",
        "",
        *table(summary),
        "",
    ]


def _interleaved(results: dict[str, TargetResult], prm: dict) -> list[str]:
    """The fixed-rate non-stream and the stream phases' tables."""
    L: list[str] = []
    L.append("## Non-stream chat")
    L.append("")
    L.append("| target | ok | errors | req/s | p50 ms | p99 ms | p99 per round ms | CPU s / 10k req | outside load |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        ns = r.ns
        L.append(
            f"| {name} | {ns.get('ok')} | {ns.get('errors')} | {fmt(ns.get('rps'), 0)} | "
            f"{fmt(ns.get('lat_p50_ms'))} | {fmt(ns.get('lat_p99_ms'))} | {_rounds(ns)} | "
            f"{fmt(cpu_per(ns, 10_000), 3)} | {_pct_s(ns)} |"
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
            f"| {name} | {st.get('ok')} | {st.get('done')} | {st.get('errors')} | {fmt(st.get('ttfb_p50_ms'))} | "
            f"{fmt(st.get('ttfb_p99_ms'))} | {_rounds(st)} | {fmt(st.get('ttft_p50_ms'))} | "
            f"{fmt(st.get('ttft_p99_ms'))} | {fmt(st.get('lat_p50_ms'))} | {fmt(cpu_per(st, 1_000), 3)} | "
            f"{_pct_s(st)} |"
        )
    d = results.get("direct")
    added_rows = []
    for name, r in results.items():
        st = r.st
        if not d or name == "direct" or d.st.get("ttfb_p50_ms") is None or st.get("ttfb_p50_ms") is None:
            continue

        def diff(k: str, st: dict = st) -> float | None:  # this round's st, bound now
            a, b = st.get(k), d.st.get(k)
            return None if a is None or b is None else a - b

        added_rows.append(
            f"| {name} | {fmt(diff('ttfb_p50_ms'))} | {fmt(diff('ttfb_p99_ms'))} | "
            f"{fmt(added_p99_paired(st, d.st))} | {fmt(diff('ttft_p50_ms'))} | {fmt(diff('ttft_p99_ms'))} | "
            f"{fmt(added_p99_paired(st, d.st, 'round_ttft_p99_ms'))} |"
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
    return L


def _saturated(results: dict[str, TargetResult], prm: dict) -> list[str]:
    """The saturated closed loop: relay and baseline, each against direct (the fake's own TTFB)."""
    rows = [(n, r) for n, r in results.items() if r.sat_ns]
    if not rows:
        return []
    d = results.get("direct")
    L = [
        "",
        f"## Saturated closed loop ({prm['sat_ns_concurrency']} non-stream clients, {prm['sat_st_concurrency']} "
        "stream clients)",
        "",
        f"Every client sends its next request as soon as the last answer ended (no fixed rate): "
        f"{prm['sat_ns_requests']:,} non-stream requests, then {prm['sat_st_streams']:,} streams (first ones "
        f"staggered over one stream's duration), per target and round, each run stopped after "
        f"{prm['sat_seconds']} s at most, in {prm['sat_rounds']} rounds alternating between the targets; same "
        "fake as the stream phase. Added TTFB = the target's minus direct's: p50 over all samples, p99 the "
        "median over rounds of (target p99 - direct p99 of the same round). Ratios: median of same-round ratios "
        "of CPU per request to the baseline's.",
        "",
        "| target | req/s | latency p50 / p99 ms | CPU s / 10k req | streams/s | [DONE] / ok | TTFB p50 / p99 ms | "
        "added TTFB p50 / p99 ms | CPU s / 1k streams | CPU ratio to baseline: req / stream | outside load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = results.get("baseline")
    for name, r in rows:
        ns, st = r.sat_ns, r.sat_st
        if d and d.sat_st and name != "direct":
            a50 = None if st.get("ttfb_p50_ms") is None or d.sat_st.get("ttfb_p50_ms") is None else (
                st["ttfb_p50_ms"] - d.sat_st["ttfb_p50_ms"])
            added = f"{fmt(a50)} / {fmt(added_p99_paired(st, d.sat_st))}"
        else:
            added = "n/a"
        if base and base.sat_ns and name != "baseline" and name != "direct":
            ratio = f"{fmt(cpu_ratio(ns, base.sat_ns))} / {fmt(cpu_ratio(st, base.sat_st))}"
        else:
            ratio = ""
        L.append(
            f"| {name} | {fmt(ns.get('rps'), 0)} | {fmt(ns.get('lat_p50_ms'))} / {fmt(ns.get('lat_p99_ms'))} | "
            f"{fmt(cpu_per(ns, 10_000), 3)} | {fmt(st.get('rps'), 0)} | {st.get('done')} / {st.get('ok')} | "
            f"{fmt(st.get('ttfb_p50_ms'))} / {fmt(st.get('ttfb_p99_ms'))} | {added} | {fmt(cpu_per(st, 1_000), 3)} | "
            f"{ratio} | {_pct_s(ns)} / {_pct_s(st)} |"
        )
    return L


def _responses(results: dict[str, TargetResult], prm: dict) -> list[str]:
    """The relay's Responses passthrough streams beside its chat streams of the same rounds."""
    rows = [(n, r) for n, r in results.items() if r.rs]
    if not rows:
        return []
    L = [
        "",
        f"## Responses passthrough streams ({prm['st_concurrency']} concurrent streams)",
        "",
        "POST /v1/responses with `stream: true` on the relay's openai channel (passed through: events forwarded "
        "as they arrive, only the terminal event parsed), in every stream round right beside the relay's chat "
        "streams, the two in turn first: same concurrency, stagger and fake "
        f"({prm['st_chunks']} text deltas {prm['st_chunk_delay_ms']} ms apart; a Responses stream also carries "
        "the created, in_progress, item and part events around them, each also that far apart, and ends with "
        "`response.completed`, which carries the whole response). Complete = ended with `data: [DONE]` (chat) "
        "or with a whole `response.completed` event (Responses).",
        "",
        "| target | request | ok | complete | errors | frames / stream | TTFB p50 ms | TTFB p99 ms | TTFT p50 ms | "
        "TTFT p99 ms | stream duration p50 ms | CPU s / 1k streams | CPU per round, Responses / chat |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        ratios = " / ".join(fmt(a / b) for a, b in zip(r.rs.get("round_cpu_per", []), r.st.get("round_cpu_per", []))
                            if a and b) or "n/a"
        for request, d in (("chat", r.st), ("responses", r.rs)):
            L.append(
                f"| {name} | {request} | {d.get('ok')} | {d.get('done')} | {d.get('errors')} | "
                f"{fmt(d.get('frames'))} | {fmt(d.get('ttfb_p50_ms'))} | {fmt(d.get('ttfb_p99_ms'))} | "
                f"{fmt(d.get('ttft_p50_ms'))} | {fmt(d.get('ttft_p99_ms'))} | {fmt(d.get('lat_p50_ms'))} | "
                f"{fmt(cpu_per(d, 1_000), 3)} | "
                f"{ratios if request == 'responses' else ''} |"
            )
    return L


def _translated(tr: dict, prm: dict) -> list[str]:
    return [
        "## Translated streams",
        "",
        f"One relay, {prm['st_streams']:,} streams per row at 50 concurrent, the fakes sending at once: chat and "
        "Responses requests on an openai channel (*passthrough*: events forwarded as they are), on the same fake "
        "as a `responses: false` openai channel (Responses *translated* from its chat chunks) and on an "
        "anthropic channel (chat *translated* from Anthropic's events; Responses translated once more, from "
        "those chat chunks). Frames = SSE events the client receives per stream; complete = ended with "
        "`data: [DONE]` (chat) or `response.completed` (Responses).",
        "",
        "| request | channel | stream path | streams | complete | frames / stream | relay CPU s / 1k frames |",
        "|---|---|---|---:|---:|---:|---:|",
        *(f"| {r.get('api', label)} | {r.get('channel', '')} | {r.get('how', label)} | {r.get('streams')} | "
          f"{fmt(r.get('done'))} | {r.get('frames')} | {fmt(r.get('cpu_per_1k_frames'), 4)} |"
          for label, r in tr.items()),
        "",
    ]


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
        "rpd, tpm and tpd limits (set too high to refuse: every bucket is checked and charged); *relay+probes* = "
        "a second relay with health probes of its 3 accounts every 0.5 s (the others: every 60 s); *relay+redis* = "
        "a second relay with the Redis limits backend and such a key; *relay+pg* = a relay scaled out as the "
        "README's \"Scaling out\" says: its database a PostgreSQL database created for the run, `limits.backend: "
        "redis` (account health shared through Redis), and a key with a balance (`relay keys create --quota "
        "1000000`: slices leased from PostgreSQL, settled in the ledger's batches) and no rate limits. "
        f"Non-stream: {prm['ns_requests']:,} chat requests per target at concurrency {prm['ns_concurrency']}, "
        f"started at a fixed {prm['ns_rate']:,} requests/s for every target (CPU per request depends on load). "
        f"Stream: {prm['st_streams']:,} streams per target at {prm['st_concurrency']} concurrent (first "
        "streams staggered over one stream's duration), fake sends "
        f"{prm['st_chunks']} chunks {prm['st_chunk_delay_ms']} ms apart (the first, a role-only preamble, at once); "
        "TTFB = request sent to first body byte; TTFT = to the first chunk with text; "
        "added TTFB = target minus direct, both over all samples, and (the checked figure) the median over "
        "rounds of the difference between the target's p99 and the direct p99 of the same round. "
        "The relay also streams POST /v1/responses (its openai channel, passed through) in every stream round, "
        "right beside its chat streams. "
        f"Both phases run in {prm['rounds']} rounds alternating between the targets; each round first sends "
        f"{prm['round_warmup']} unrecorded requests per connection (keep-alive connections open, counters "
        "read after them); percentiles are over all samples of all rounds; the checked CPU ratios are the "
        "median over rounds of the ratio between two targets' CPU per request in the same round. "
        f"Slow streams: {prm['slow_streams']:,} concurrent streams of {prm['slow_chunks']} chunks "
        f"{prm['slow_chunk_delay_ms']} ms apart; RSS per stream = (peak VmRSS - VmRSS before) / N. "
        f"Workers: `relay serve --workers N` (SQLite) for N = 1 and 2, started afresh in each of {prm['wk_rounds']} "
        f"rounds alternating between the Ns, {prm['wk_requests']:,} non-stream requests at {prm['wk_rate']:,}/s "
        "each, every process of the relay on one CPU; CPU summed over the parent and all workers; memory from "
        "/proc/PID/smaps_rollup after the load (private = Private_Clean + Private_Dirty). "
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
        "anything above a few %% makes the latency columns unreliable; the PostgreSQL and Redis servers (not "
        "pinned) count as outside load." % CPU_AUX
    )
    L.append("")
    if any(r.ns for r in results.values()):  # not when the saturated phase ran alone
        L.extend(_interleaved(results, prm))
    L.extend(_responses(results, prm))
    L.extend(_saturated(results, prm))
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
                f"{fmt(s.get('rss_per_stream_kb'), 1)} | {fmt(cpu_per(s, 1_000), 3)} | {_pct_s(s)} |"
            )
    if checks:
        L.append("")
        tr = info.get("translated") or {}
        if tr:
            L.extend(_translated(tr, prm))
        if info.get("workers"):
            L.extend(_workers(info["workers"]))
        L.append("## Targets")
        L.append("")
        for ok, text in checks.values():
            L.append(f"- {verdict(ok)}: {text}")
    failures = []
    for name, r in results.items():
        for phase, d_ in (("non-stream", r.ns), ("stream", r.st), ("responses stream", r.rs), ("slow", r.slow),
                          ("saturated non-stream", r.sat_ns), ("saturated stream", r.sat_st)):
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


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
