"""bench/checks.py and bench/report.py on made-up measurements: the verdicts and lines `make bench` reports.

No process is started and nothing is timed: these are the pure functions that turn figures into PASS, FAIL
or SKIP and into the report's tables.
"""

from __future__ import annotations

import pytest

from bench.checks import pg_checks, relay_checks, responses_checks, workers_checks
from bench.measure import TargetResult
from bench.report import render
from bench.run import QUICK
from bench.workers import summarize


def ns(cpu_per_round: list[float], errors: int = 0) -> dict:
    """A pooled non-stream phase with the given CPU s per request in each round (1,000 requests a round)."""
    return {"ok": 1000 * len(cpu_per_round), "errors": errors, "cpu_s": 1000 * sum(cpu_per_round),
            "round_cpu_per": cpu_per_round, "lat_p50_ms": 1.0, "lat_p99_ms": 5.0, "round_p99_ms": [5.0],
            "wall_s": 1.0, "outside_cpu_s": 0.0, "rps": 1500.0}


def target(name: str, cpu_per_round: list[float], errors: int = 0) -> TargetResult:
    return TargetResult(name, ns=ns(cpu_per_round, errors), st={"ok": 10, "errors": 0})


def run(workers: int, cpu_ms: float, private_mb: float, errors: int = 0) -> dict:
    names = ["the one process"] if workers == 1 else ["parent"] + [f"worker {i}" for i in range(workers)]
    mem = {n: {"rss_mb": 100.0, "pss_mb": 60.0 if n == names[0] else 20.0, "private_mb": private_mb}
           for n in names}
    return {"workers": workers, "ok": 6000, "errors": errors, "cpu_ms_per_req": cpu_ms, "memory": mem,
            "outside_cpu_s": 0.0, "wall_s": 6.0}


def test_pg_relay_passes_within_115_percent_of_the_sqlite_relay_by_the_median_of_same_round_ratios() -> None:
    relay = target("relay", [1.0, 1.0, 1.0])
    # one disturbed round (3x) does not decide it
    (ok, text), = pg_checks(relay, target("relay+pg", [1.1, 3.0, 1.12]), None).values()
    assert ok is True and "1.12x" in text
    (ok, _), = pg_checks(relay, target("relay+pg", [1.2, 1.3, 1.1]), None).values()
    assert ok is False
    (ok, _), = pg_checks(relay, target("relay+pg", [1.0, 1.0, 1.0], errors=3), None).values()
    assert ok is False  # failed requests fail the check whatever the CPU


def test_an_unreachable_pg_is_a_skip_that_says_why() -> None:
    checks = relay_checks({"relay": target("relay", [1.0])}, QUICK,
                          unmeasured={"relay+pg": "no PostgreSQL at postgresql://postgres@127.0.0.1:1/test"})
    ok, text = checks["pg_cpu"]
    assert ok is None and "no PostgreSQL at postgresql://postgres@127.0.0.1:1/test" in text
    assert "pg_cpu" not in relay_checks({"relay": target("relay", [1.0])}, QUICK)  # not asked for: no line


def test_workers_checks_cpu_ratio_and_each_workers_private_memory() -> None:
    runs = {1: [run(1, 0.40, 90.0), run(1, 0.40, 90.0)], 2: [run(2, 0.42, 12.0), run(2, 0.44, 12.0)]}
    summary = summarize([1, 2], runs)
    assert summary["ratio"][2] == pytest.approx(1.075)  # the median of 1.05 and 1.10
    assert summary["added_pss_mb"][2] == (60 + 40) - 60
    checks = workers_checks(summary)
    assert checks["workers2_cpu"][0] is True and checks["workers2_memory"][0] is True
    assert "worker 0 12.0, worker 1 12.0" in checks["workers2_memory"][1]

    heavy = summarize([1, 2], {1: [run(1, 0.40, 90.0)], 2: [run(2, 0.41, 41.0)]})
    assert workers_checks(heavy)["workers2_memory"][0] is False
    slow = summarize([1, 2], {1: [run(1, 0.40, 90.0)], 2: [run(2, 0.48, 12.0)]})
    assert workers_checks(slow)["workers2_cpu"][0] is False


def test_report_lists_relay_pg_beside_the_others_and_every_process_of_the_workers_phase() -> None:
    results = {"relay": target("relay", [1e-4]), "relay+pg": target("relay+pg", [1.05e-4])}
    summary = summarize([1, 2], {1: [run(1, 0.40, 90.0)], 2: [run(2, 0.41, 12.0)]},
                        requests=6000, rate=1000, concurrency=50, rounds=1)
    checks = relay_checks(results, QUICK, workers=summary)
    text = render(results, QUICK, True, checks, {"date": "today", "cpu_model": "cpu", "wall_s": 1.0,
                                                "notes": [], "workers": summary})
    assert "| relay+pg | 1000 | 0 |" in text
    assert "## Workers" in text
    for process in ("the one process", "parent", "worker 0", "worker 1"):
        assert f"| {process} | 100.0 |" in text
    assert "- PASS: relay on PostgreSQL + Redis CPU per non-stream request <= 1.15x relay on SQLite: 1.05x" in text


def streams(cpu_per_round: list[float], done: int | None = None, errors: int = 0, frames: int = 23) -> dict:
    """A pooled stream phase: 100 streams a round with the given CPU s per stream, `done` complete (all)."""
    ok = 100 * len(cpu_per_round)
    return {"ok": ok, "done": ok if done is None else done, "errors": errors, "cpu_s": 100 * sum(cpu_per_round),
            "round_cpu_per": cpu_per_round, "frames": frames, "wall_s": 1.0, "outside_cpu_s": 0.0}


def relay_with_responses(chat: list[float], responses: list[float], **kw) -> TargetResult:
    return TargetResult("relay", ns=ns([1e-4]), st=streams(chat), rs=streams(responses, frames=28, **kw))


def test_responses_passthrough_passes_within_110_percent_of_chat_per_event_by_the_median_of_same_round_ratios() -> None:
    # 28 events against 23: per stream 1.08x is 0.89x per event; one disturbed round (2x) does not decide it
    (ok, text), = responses_checks(relay_with_responses([2.0, 2.0, 2.0], [2.1, 4.0, 2.16])).values()
    assert ok is True and "<= 1.1x per chat passthrough stream event: 0.89x (28 vs 23 events" in text
    assert "per stream 1.08x" in text and "300/300 ended with response.completed" in text
    # 1.40x per stream is 1.15x per event: too dear
    (ok, text), = responses_checks(relay_with_responses([2.0, 2.0, 2.0], [2.8, 2.8, 2.7])).values()
    assert ok is False and ": 1.15x" in text


def test_responses_streams_that_did_not_complete_or_failed_fail_the_check_whatever_the_cpu() -> None:
    (ok, text), = responses_checks(relay_with_responses([2.0], [2.0], done=99)).values()
    assert ok is False and "99/100 ended with response.completed" in text
    (ok, _), = responses_checks(relay_with_responses([2.0], [2.0], errors=1)).values()
    assert ok is False


def test_report_shows_responses_beside_chat_streams_and_translated_responses_rows() -> None:
    results = {"relay": relay_with_responses([2e-3, 2e-3], [2.1e-3, 2.2e-3])}
    checks = relay_checks(results, QUICK)
    assert checks["responses_cpu"][0] is True
    translated = {"responses / anthropic": {"api": "responses", "channel": "anthropic", "how": "translated",
                                            "frames": 16, "streams": 500, "done": 500, "cpu_per_1k_frames": 0.12}}
    text = render(results, QUICK, True, checks, {"date": "today", "cpu_model": "cpu", "wall_s": 1.0, "notes": [],
                                                "translated": translated})
    assert "## Responses passthrough streams (100 concurrent streams)" in text
    assert "| relay | responses | 200 | 200 | 0 | 28 |" in text
    assert "| 2.150 | 1.05 / 1.10 |" in text  # pooled CPU s / 1k streams, then each round's ratio
    assert "| responses | anthropic | translated | 500 | 500 | 16 | 0.1200 |" in text
    assert "- PASS: relay CPU per Responses passthrough stream event (POST /v1/responses, openai channel)" in text
