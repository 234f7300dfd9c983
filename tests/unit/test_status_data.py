"""The status document and page from stored buckets and the router: states, banner, bars, uptime, latency,
what is private, and the cache in front of the store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from relay.config import ChannelConfig, RetryConfig, StatusConfig
from relay.errors import UpstreamFailure
from relay.router import Router
from relay.status_data import BARS, StatusBoard, build_status
from relay.status_page import render_status
from relay.store_api import BucketCount

T0 = 1_767_225_600
NOW = T0 + 90 * 60 + 30  # inside the bucket that starts at T0 + 90 min (60 s buckets)
CUR = T0 + 90 * 60


def router(*models: str) -> Router:
    ch = ChannelConfig(name="secret-channel", type="openai", base_url="http://x", keys=("k0", "k1"),
                       models=models or ("m",))
    return Router([ch], RetryConfig(), clock=lambda: 0.0)


def doc(rows: list[BucketCount], r: Router | None = None, show: bool = False, totals: Any = None) -> dict[str, Any]:
    return build_status(StatusConfig(bucket=60, show_channels=show, title="T"), r or router(), rows, totals or {}, NOW)


def b(start: int, ok: int, failed: int, name: str = "m", lat: float = 0.0, n: int = 0) -> BucketCount:
    return BucketCount("model", name, start, ok, failed, lat, n)


def test_bars_cover_the_last_ninety_buckets_and_state_follows_the_last_two() -> None:
    d = doc([b(CUR - 89 * 60, 1, 0), b(CUR - 60, 99, 1, lat=500.0, n=99), b(CUR, 0, 0)])
    m = d["models"][0]
    assert len(m["bars"]) == BARS and m["bars"][0]["start"] == CUR - 89 * 60 and m["bars"][-1]["end"] == CUR + 60
    assert m["bars"][0]["availability"] == 1.0 and m["bars"][1]["availability"] is None
    assert m["bars"][-2] == {"start": CUR - 60, "end": CUR, "ok": 99, "failed": 1, "availability": 0.99}
    assert m["state"] == "operational" and d["banner"] == "All systems operational"
    assert m["latency_ms"] == round(500 / 99, 1)

    assert doc([b(CUR - 60, 90, 10)])["banner"] == "Degraded performance"
    assert doc([b(CUR - 60, 90, 10)])["models"][0]["state"] == "degraded"
    assert doc([b(CUR, 1, 9)])["banner"] == "Major outage"
    # an old failure no longer decides the present state
    assert doc([b(CUR - 120, 0, 10)])["state"] == "operational"


def test_no_account_in_rotation_is_an_outage_and_half_the_models_down_is_major() -> None:
    r = router("a", "b")
    for acc in r.accounts:
        r.failed(acc, UpstreamFailure("refused", kind="auth", status=401))
    assert doc([], r)["banner"] == "Major outage" and {m["in_rotation"] for m in doc([], r)["models"]} == {False}
    ok = ChannelConfig(name="other", type="openai", base_url="http://y", keys=("k",), models=("a", "b", "c"))
    r2 = Router([ChannelConfig(name="x", type="openai", base_url="http://x", keys=("k",), models=("a",)), ok],
                RetryConfig(), clock=lambda: 0.0)
    rows = [b(CUR, 0, 5, "a")]  # one model of three down
    assert doc(rows, r2)["banner"] == "Degraded performance"
    assert doc(rows + [b(CUR, 0, 5, "b")], r2)["banner"] == "Major outage"  # two of three


def test_a_relay_refusing_all_work_shows_every_model_in_outage() -> None:
    d = build_status(StatusConfig(bucket=60), router("a", "b"), [b(CUR, 10, 0, "a")], {}, NOW, overloaded=True)
    assert d["banner"] == "Major outage" and {m["state"] for m in d["models"]} == {"outage"}


def test_uptime_windows_and_private_names() -> None:
    totals = {("model", "m"): [(999, 1), (9, 1), (0, 0), (1, 3)]}
    d = doc([], totals=totals)
    assert d["models"][0]["uptime"] == {"24h": 0.999, "7d": 0.9, "30d": None, "90d": 0.25}
    assert "channels" not in d and "channels" not in d["models"][0]
    page = render_status(d).decode()
    assert "secret-channel" not in page and "account 0" not in page and "account 1" not in page
    assert "99.90%" in page and "25.00%" in page and "—" in page
    r = router()
    r.failed(r.accounts[1], UpstreamFailure("refused", kind="auth", status=401))
    assert "account 1" not in render_status(doc([], r)).decode()
    shown = doc([BucketCount("channel", "secret-channel", CUR, 3, 1)], r, show=True)
    assert shown["channels"][0]["accounts_out"] == [{"index": 1, "state": "disabled"}]
    assert "account 1: disabled" in render_status(shown).decode()
    assert shown["models"][0]["channels"] == ["secret-channel"]
    assert shown["channels"][0]["name"] == "secret-channel" and shown["channels"][0]["bars"][-1]["failed"] == 1
    assert "secret-channel" in render_status(shown).decode()


def test_bar_colours_follow_the_thresholds() -> None:
    rows = [b(CUR - 3 * 60, 99, 1), b(CUR - 2 * 60, 98, 2), b(CUR - 60, 1, 1), b(CUR, 49, 51)]
    page = render_status(doc(rows)).decode()
    bars = page.split("class='bars'", 1)[1].split("</div>", 1)[0]
    classes = [part.split("'", 1)[0] for part in bars.split("class='bar ")[1:]]
    assert classes[-4:] == ["bar-ok", "bar-warn", "bar-warn", "bar-bad"] and classes[0] == "bar-none"
    assert "title='" in bars and "50.00% ok of 2" in bars


class CountingStore:
    def __init__(self) -> None:
        self.reads = 0

    async def buckets_since(self, since: int, width: int) -> list[BucketCount]:
        self.reads += 1
        await asyncio.sleep(0)
        return []

    async def bucket_totals(self, since: Sequence[int]) -> dict[tuple[str, str], list[tuple[int, int]]]:
        return {}


async def test_a_flood_of_requests_reads_the_store_once() -> None:
    store = CountingStore()
    board = StatusBoard(store, router(), StatusConfig())  # type: ignore[arg-type]
    docs = await asyncio.gather(*(board.document() for _ in range(50)))
    assert store.reads == 1 and all(d is docs[0] for d in docs)
