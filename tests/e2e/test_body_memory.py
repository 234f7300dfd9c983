"""Large bodies cannot exhaust the relay's memory: what requests in flight hold is capped
(server.max_inflight_body_bytes; past it 503 with Retry-After), and client strings that are stored or
echoed are length-capped."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml

from relay.web_input import BODY_BUDGET
from tests.conftest import CLIENT_KEY, RelayFactory
from tests.procs import Processes

MB = 1024 * 1024


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def big_body(size: int) -> bytes:
    image = "data:image/png;base64," + "A" * size
    return orjson.dumps({"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}}]}]})


async def test_200_concurrent_10mb_bodies_stay_within_the_cap(procs: Processes, tmp_path: Path) -> None:
    upstream = await procs.fake_upstream("--latency-ms", "300")
    cap = 256 * MB
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({
        "database": str(tmp_path / "relay.db"),
        "server": {"max_inflight_body_bytes": cap},
        "client_keys": [{"name": "t", "key": CLIENT_KEY}],
        "channels": [{"name": "f", "type": "openai", "base_url": upstream, "keys": ["a"], "models": ["demo"]}],
        "prices": {"demo": {"input": 1, "output": 1}},
        "log_level": "warning",
    }))
    proc, url = await procs.relay(config)
    idle = rss_kib(proc.pid, "VmRSS")
    body = big_body(10 * MB)

    async def send(http: aiohttp.ClientSession) -> tuple[int, str | None]:
        try:
            async with http.post(url + "/v1/chat/completions", data=io.BytesIO(body), headers={
                    "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}) as resp:
                raw = await resp.read()
                assert resp.status in (200, 503), raw[:300]
                return resp.status, resp.headers.get("Retry-After") if resp.status == 503 else orjson.loads(raw).get("id")
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            return 0, None  # the relay refused early and closed while the client was still sending

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(*(send(http) for _ in range(200)))
    statuses = Counter(s for s, _ in results)
    assert set(statuses) <= {200, 503}, statuses  # nothing but the documented 503 (and no 5xx of another kind)
    assert statuses[200] >= 20
    assert all(extra == "1" for s, extra in results if s == 503)
    peak = rss_kib(proc.pid, "VmHWM")
    grown_mb = (peak - idle) / 1024
    # bodies held at once are at most cap / 10 MB; each costs ~2.5x its size in flight (README)
    assert grown_mb < 3 * cap / MB, f"relay RSS grew by {grown_mb:.0f} MB ({statuses})"
    print(f"relay RSS: idle {idle // 1024} MB, peak {peak // 1024} MB, {statuses[200]} served, {statuses[503]} refused")


async def test_a_huge_model_name_is_refused_and_not_stored(relay_factory: RelayFactory, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    relay = await relay_factory(database=db)
    name = "m" * MB
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            data = orjson.dumps({"model": name, "messages": [{"role": "user", "content": "x"}]})
            async with http.post(relay.v1 + "/chat/completions", data=io.BytesIO(data), headers={
                    "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}) as resp:
                raw = await resp.read()
                assert resp.status == 400
                assert len(raw) < 1000 and orjson.loads(raw)["error"]["param"] == "model"
        data = orjson.dumps({"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        async with http.post(relay.v1 + "/messages", data=io.BytesIO(data), headers={
                "x-api-key": CLIENT_KEY, "Content-Type": "application/json"}) as resp:
            assert resp.status == 400 and len(await resp.read()) < 1000
    await asyncio.sleep(0.3)  # the ledger's flush interval in tests is 0.05 s
    with sqlite3.connect(db) as conn:
        longest = conn.execute("SELECT coalesce(max(length(model)), 0), count(*) FROM usage").fetchone()
    assert longest[1] == 4 and longest[0] < 300  # every refusal recorded, none with the name


async def test_a_large_body_reaches_the_upstream_whole_and_not_chunked(relay_factory: RelayFactory, upstream) -> None:
    relay = await relay_factory()
    body = big_body(3 * MB)
    async with aiohttp.ClientSession() as http:
        async with http.post(relay.v1 + "/chat/completions", data=io.BytesIO(body), headers={
                "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}) as resp:
            assert resp.status == 200
    got = upstream.records[-1]
    assert got.body == body
    assert got.headers["Content-Length"] == str(len(body)) and "Transfer-Encoding" not in got.headers


async def test_a_keep_alive_connection_gives_back_what_its_requests_held(relay_factory: RelayFactory) -> None:
    """A body is held while its request is in flight, not for as long as the client's connection lives: one
    connection sending bodies one after another, together far past the cap, is never refused."""
    relay = await relay_factory(server={"max_inflight_body_bytes": MB})
    budget = relay.app[BODY_BUDGET]
    body = big_body(300 * 1024)
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection for every request
    async with aiohttp.ClientSession(connector=connector) as http:
        for i in range(12):  # 3.6 MB in all
            async with http.post(relay.v1 + "/chat/completions", data=body, headers={
                    "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}) as resp:
                assert resp.status == 200, (i, await resp.text())
                await resp.read()
            assert budget.held == 0
        async with http.post(relay.v1 + "/chat/completions", data=big_body(10), headers={
                "Authorization": f"Bearer {CLIENT_KEY}"}) as resp:  # a request refused before it reads a body
            assert resp.status in (200, 400)
    assert budget.held == 0
