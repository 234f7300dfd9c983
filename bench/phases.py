"""The measured phases: interleaved rounds (non-stream, stream: chat and Responses), the saturated closed loop,
slow streams, translated streams.

Each phase drives targets that are already running and returns what it measured; starting and stopping
the targets is the caller's (bench/run.py).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.measure import Target, TargetResult, brief, fmt, merge, run_load
from bench.procs import CPU_SUT, PY, Proc, free_port, start_fake, start_fake_anthropic, url
from bench.relays import CLIENT_KEY

__all__ = ["SATURATED_TARGETS", "TRANSLATED", "Log", "bench_interleaved", "bench_saturated", "bench_slow",
           "bench_translated", "stream_events"]

Log = Callable[[str], None]


def bench_interleaved(targets: list[Target], prm: dict, log: Log) -> dict[str, TargetResult]:
    """Non-stream and stream phases, in rounds that alternate between the targets.

A target with `responses` also streams POST /v1/responses in every stream round, right beside its chat
streams (same concurrency, chunks and chunk delay), so the two are compared round by round.

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
        run_load(url(t.port), t.key, "nonstream", prm["ns_warmup"], prm["ns_concurrency"], None)
        run_load(url(t.port), t.key, "stream", prm["st_warmup"], prm["st_concurrency"], None,
                 stagger=stagger)
        if t.responses:
            run_load(url(t.port, "responses"), t.key, "stream", prm["st_warmup"], prm["st_concurrency"], None,
                     stagger=stagger, api="responses")
    # frames per stream of each API (a Responses stream has more events than chat for the same text)
    frames = {t.name: {api: stream_events(t.port, t.key, "demo", api) for api in ("chat", "responses")}
              for t in targets if t.responses}
    per = max(1, prm["ns_requests"] // rounds)
    log(f"non-stream: {rounds} rounds x {per} requests @ {prm['ns_concurrency']} per target")
    parts: dict[str, list[dict]] = {t.name: [] for t in targets}
    for i in range(rounds):
        for t in targets:
            r = run_load(url(t.port), t.key, "nonstream", per, prm["ns_concurrency"], t.pid,
                         warmup=prm["round_warmup"] * prm["ns_concurrency"], raw=True, ramp=prm["ns_rate"])
            parts[t.name].append(r)
            log(f"  [{t.name}] round {i + 1}: {brief(r)}")
    for t in targets:
        res[t.name].ns = merge(parts[t.name])
        log(f"[{t.name}] non-stream: {brief(res[t.name].ns)}")
    per = max(1, prm["st_streams"] // rounds)
    log(f"stream: {rounds} rounds x {per} streams @ {prm['st_concurrency']} per target")
    parts = {t.name: [] for t in targets}
    rparts: dict[str, list[dict]] = {t.name: [] for t in targets if t.responses}
    for i in range(rounds):
        for t in targets:
            # a target with Responses streams runs them next to its chat streams, the two in turn first
            apis = ["chat", "responses"] if t.responses else ["chat"]
            for api in apis if i % 2 == 0 else apis[::-1]:
                r = run_load(url(t.port, api), t.key, "stream", per, prm["st_concurrency"], t.pid,
                             warmup=prm["round_warmup"] * prm["st_concurrency"], stagger=stagger, raw=True,
                             api=api)
                (parts if api == "chat" else rparts)[t.name].append(r)
                log(f"  [{t.name}{'' if api == 'chat' else ' responses'}] round {i + 1}: {brief(r)}")
    for t in targets:
        res[t.name].st = merge(parts[t.name])
        log(f"[{t.name}] stream: {brief(res[t.name].st)}")
        if t.responses:
            res[t.name].st["frames"] = frames[t.name]["chat"]
            res[t.name].rs = {**merge(rparts[t.name]), "frames": frames[t.name]["responses"]}
            log(f"[{t.name}] responses stream: {brief(res[t.name].rs)}")
    return res


# the saturated phase compares the relay with the baseline; direct gives the fake's own TTFB
SATURATED_TARGETS = ("direct", "baseline", "relay")


def bench_saturated(targets: list[Target], prm: dict, log: Log) -> dict[str, dict[str, dict]]:
    """Closed loop, flat out: every client sends its next request as soon as the last answer ended.

    `sat_ns_concurrency` non-stream clients, then `sat_st_concurrency` stream clients, in `sat_rounds` rounds
    that alternate between the targets (direct, baseline and relay of `targets`). Each run is bounded by a
    count (`sat_ns_requests`, `sat_st_streams` per round) and a time (`sat_seconds`: no request starts after
    it). Returns {target: {"ns": pooled, "st": pooled}}.
    """
    tl = [t for t in targets if t.name in SATURATED_TARGETS]
    rounds, secs = prm["sat_rounds"], float(prm["sat_seconds"])
    stagger = prm["st_chunks"] * prm["st_chunk_delay_ms"] / 1000.0
    ns_c, st_c = prm["sat_ns_concurrency"], prm["sat_st_concurrency"]
    log(f"saturated: {rounds} rounds x ({prm['sat_ns_requests']} requests @ {ns_c} clients, "
        f"{prm['sat_st_streams']} streams @ {st_c} clients), closed loop, at most {secs:g} s each")
    for t in tl:  # first connections, lazy imports and caches are not counted
        run_load(url(t.port), t.key, "nonstream", prm["ns_warmup"], ns_c, None)
        run_load(url(t.port), t.key, "stream", prm["st_warmup"], st_c, None, stagger=stagger)
    parts: dict[str, dict[str, list[dict]]] = {t.name: {"ns": [], "st": []} for t in tl}
    for i in range(rounds):
        for t in tl:
            r = run_load(url(t.port), t.key, "nonstream", prm["sat_ns_requests"], ns_c, t.pid,
                         warmup=prm["round_warmup"] * ns_c, raw=True, duration=secs)
            parts[t.name]["ns"].append(r)
            log(f"  [{t.name}] saturated non-stream round {i + 1}: {brief(r)}")
        for t in tl:
            # first streams staggered over one stream's duration (steady state), then each client loops
            r = run_load(url(t.port), t.key, "stream", prm["sat_st_streams"], st_c, t.pid,
                         warmup=prm["round_warmup"] * st_c, stagger=stagger, raw=True, duration=secs)
            parts[t.name]["st"].append(r)
            log(f"  [{t.name}] saturated stream round {i + 1}: {brief(r)}")
    out = {}
    for t in tl:
        out[t.name] = {"ns": merge(parts[t.name]["ns"]), "st": merge(parts[t.name]["st"])}
        log(f"[{t.name}] saturated non-stream: {brief(out[t.name]['ns'])}")
        log(f"[{t.name}] saturated stream: {brief(out[t.name]['st'])}")
    return out


def bench_slow(name: str, port: int, key: str, sut_pid: int, prm: dict, log: Log) -> dict:
    target = url(port)
    n = prm["slow_streams"]
    # warm-up (non-stream only: a stream against this upstream takes seconds) so that first
    # connections and lazy imports are not counted as per-stream memory
    run_load(target, key, "nonstream", 500, 50, None)
    time.sleep(0.5)
    log(f"[{name}] slow streams: {n} concurrent")
    r = run_load(target, key, "stream", n, n, sut_pid, ramp=prm["slow_ramp"])
    r["rss_per_stream_kb"] = (r["rss_peak_kb"] - r["rss_before_kb"]) / n
    log(f"    {brief(r)}")
    return r


def stream_events(port: int, key: str, model: str, api: str = "chat") -> int:
    """SSE events (frames) the relay sends for one streamed answer of `model` (a chat or Responses stream)."""
    payload: dict = {"model": model, "stream": True}
    if api == "responses":
        payload["input"] = "hi"
    else:
        payload["messages"] = [{"role": "user", "content": "hi"}]
    req = urllib.request.Request(
        url(port, api), data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().count(b"data:")


# (request, channel, what the relay does with the stream, model); the channels are in bench_translated's config
TRANSLATED = (
    ("chat", "openai", "passthrough", "demo"),
    ("chat", "anthropic", "translated", "claude-bench"),
    ("responses", "openai", "passthrough", "demo"),
    ("responses", "anthropic", "translated", "claude-bench"),
    ("responses", "openai, responses: false", "translated", "demo-chat"),
)


def bench_translated(logdir: Path, prm: dict, log: Log) -> dict:
    """Relay CPU per 1,000 stream frames, chat and Responses requests, passed through or translated.

    One relay, three channels: an openai channel on the fake (chat and Responses passed through), the same
    fake as a `responses: false` openai channel (Responses served over its chat) and an anthropic channel
    (chat translated from Anthropic's events; Responses translated once more from those chat chunks).
    """
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
        "  - {name: fake-chat, type: openai, base_url: 'http://127.0.0.1:%d/v1', keys: [k1], models: [demo-chat],\n"
        "     responses: false}\n"
        "  - {name: claude, type: anthropic, base_url: 'http://127.0.0.1:%d', keys: [ak1], models: [claude-bench]}\n"
        "prices: {demo: {input: 1, output: 2}, demo-chat: {input: 1, output: 2}, "
        "claude-bench: {input: 3, output: 15}}\n"
        "log_level: warning\n" % (port, json.dumps(str(logdir / "relay-tr.db")), CLIENT_KEY, fake.port, fake.port,
                                  claude.port)
    )
    relay = Proc("relay-tr", [PY, "-m", "relay", "serve", "--config", str(cfg), "--port", str(port)],
                 CPU_SUT, logdir, port)
    out: dict = {}
    try:
        relay.wait_ready("/healthz", timeout=60.0)
        n = prm["st_streams"]
        for api, channel, how, model in TRANSLATED:
            frames = stream_events(port, CLIENT_KEY, model, api)
            run_load(url(port, api), CLIENT_KEY, "stream", 200, 50, None, model=model, api=api)
            r = run_load(url(port, api), CLIENT_KEY, "stream", n, 50, relay.pid, model=model, api=api)
            per_k = r["cpu_s"] / (r["ok"] * frames) * 1000 if r.get("ok") and frames else None
            label = f"{api} / {channel}"
            out[label] = {"api": api, "channel": channel, "how": how, "frames": frames, "streams": r.get("ok"),
                          "done": r.get("done"), "errors": r.get("errors"), "cpu_s": r.get("cpu_s"),
                          "cpu_per_1k_frames": per_k}
            log(f"[{label}, {how}] {r.get('ok')} streams ({r.get('done')} complete) of {frames} frames: "
                f"relay CPU {fmt(per_k, 4)} s / 1k frames")
    finally:
        for p in (relay, claude, fake):
            p.stop()
    return out
