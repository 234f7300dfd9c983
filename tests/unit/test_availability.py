"""Availability counting: what counts as ok, failed or nothing, buckets on an injected clock, probes, and the
flusher keeping counts while the store fails."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from relay.availability import RETENTION, AvailabilityRecorder, traffic_outcome
from relay.store_api import BucketCount

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a multiple of every bucket used here


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStore:
    def __init__(self) -> None:
        self.written: list[list[BucketCount]] = []
        self.fail = False
        self.pruned: list[int] = []

    async def add_buckets(self, rows: Sequence[BucketCount]) -> None:
        if self.fail:
            raise OSError("disk full")
        self.written.append(list(rows))

    async def prune_buckets(self, before: int) -> int:
        self.pruned.append(before)
        return 0


@dataclass(frozen=True, slots=True)
class ProbeResult:  # the prober's result shape
    channel: str
    account: int
    uid: str
    model: str
    ok: bool
    kind: str
    status: int | None
    latency_ms: float
    error: str
    at: float


def recorder(clock: Clock, bucket: int = 300) -> tuple[AvailabilityRecorder, FakeStore]:
    store = FakeStore()
    return AvailabilityRecorder(store, bucket, clock), store  # type: ignore[arg-type]


def counts(rec: AvailabilityRecorder) -> dict[tuple[str, str, int], tuple[int, int]]:
    return {(b.scope, b.name, b.start): (b.ok, b.failed) for b in rec.pending()}


@pytest.mark.parametrize(
    "status, end_reason, upstream_wide, expected",
    [
        (200, "ok", False, True),
        (200, "client_disconnected", False, True),  # the client left a stream that was working
        (200, "upstream_error", False, False),  # the upstream broke the stream off
        (502, "upstream_error", False, False),
        (503, "upstream_error", False, False),  # no account available
        (504, "upstream_error", False, False),
        (500, "upstream_error", False, False),
        (429, "rejected", True, False),  # every account of the model rate limited
        (429, "rejected", False, None),  # the key's own rate limit or balance
        (400, "rejected", False, None),
        (404, "rejected", False, None),  # unknown model
        (400, "upstream_rejected", False, None),  # the upstream refused the request itself
        (499, "client_disconnected", False, None),
        (200, "shutdown", False, None),
    ],
)
def test_what_counts(status: int, end_reason: str, upstream_wide: bool, expected: bool | None) -> None:
    assert traffic_outcome(status, end_reason, upstream_wide) is expected


def test_requests_count_per_model_and_channel_in_their_bucket() -> None:
    clock = Clock(T0 + 10)
    rec, _ = recorder(clock)
    rec.observe_request("m", "c", 200, "ok", 100.0)
    rec.observe_request("m", "c", 502, "upstream_error", 900.0)
    rec.observe_request("m", None, 503, "upstream_error", 1.0)  # refused before any account was tried
    rec.observe_request("m", "c", 400, "rejected", 1.0)  # not counted
    clock.now = T0 + 299
    rec.observe_request("m", "c", 200, "ok", 300.0)
    clock.now = T0 + 300  # the next bucket
    rec.observe_request("m", "c", 429, "rejected", 5.0, upstream_wide=True)
    assert counts(rec) == {
        ("channel", "c", T0): (2, 1), ("model", "m", T0): (2, 2),
        ("channel", "c", T0 + 300): (0, 1), ("model", "m", T0 + 300): (0, 1),
    }
    first = next(b for b in rec.pending() if (b.scope, b.start) == ("model", T0))
    assert (first.latency_ms_sum, first.latency_n) == (400.0, 2)  # latency of ok outcomes only


def test_probes_count_at_their_own_time() -> None:
    clock = Clock(T0 + 1000)
    rec, _ = recorder(clock, bucket=60)
    rec.observe_probe(ProbeResult("c", 1, "u", "m", True, "ok", 200, 80.0, "", T0 + 5))
    rec.observe_probe(ProbeResult("c", 0, "u", "m", False, "server", 500, 30.0, "HTTP 500", T0 + 61))
    assert counts(rec) == {
        ("channel", "c", T0): (1, 0), ("model", "m", T0): (1, 0),
        ("channel", "c", T0 + 60): (0, 1), ("model", "m", T0 + 60): (0, 1),
    }


async def test_a_failed_flush_keeps_the_counts_and_adds_the_next_ones() -> None:
    clock = Clock(T0)
    rec, store = recorder(clock)
    rec.observe("m", "c", True, 10.0)
    store.fail = True
    assert not await rec.flush_once()
    rec.observe("m", "c", False)
    store.fail = False
    assert await rec.flush_once()
    assert store.written == [[
        BucketCount("channel", "c", T0, 1, 1, 10.0, 1), BucketCount("model", "m", T0, 1, 1, 10.0, 1),
    ]]
    assert rec.pending() == [] and await rec.flush_once() and len(store.written) == 1  # nothing twice


async def test_close_writes_what_is_pending_and_pruning_keeps_ninety_days() -> None:
    clock = Clock(T0)
    rec, store = recorder(clock, bucket=1)
    rec.start()
    rec.observe("m", None, True)
    await rec.close()
    assert [r for batch in store.written for r in batch] == [BucketCount("model", "m", T0, 1, 0, 0.0, 0)]
    assert store.pruned == [T0 - RETENTION]  # pruned once at start
    assert RETENTION >= 90 * 86400


def test_memory_is_bounded_while_the_store_is_away(monkeypatch: Any) -> None:
    monkeypatch.setattr("relay.availability._MAX_PENDING", 4)
    clock = Clock(T0)
    rec, _ = recorder(clock, bucket=1)
    for i in range(10):
        clock.now = T0 + i
        rec.observe("m", "c", True)
    assert len(rec.pending()) == 4 and rec.dropped == 16
