"""Routing, failover, streaming failures, client disconnects, the ledger and the operations pages.

Everything goes through real HTTP: the official openai SDK (max_retries=0) or aiohttp where the bytes on
the wire matter, against the relay in front of the fake OpenAI upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.fake_upstream import delay, hang, reset, stall_after, status, truncate_after
from relay.app import PROXY
from tests.conftest import ACCOUNTS, CLIENT_KEY, MODELS, Relay, Upstream

T = TypeVar("T")

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
_SEQ = itertools.count(1)


# -- helpers ---------------------------------------------------------------------------------------------


def prompt(tag: str = "q") -> str:
    """A unique prompt: it identifies the request among the upstream's records."""
    return f"{tag}-{next(_SEQ)}-{time.monotonic_ns()}"


def body(content: str, stream: bool = False, model: str = "demo") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


def attempts_of(upstream: Upstream, content: str) -> list[str | None]:
    """The upstream keys one request reached, in order."""
    out = []
    for rec in upstream.records:
        if rec.path.endswith("/chat/completions") and content.encode() in rec.body:
            out.append(rec.key)
    return out


async def until_consumed(upstream: Upstream, key: str, send: Callable[[str], Awaitable[T]]) -> tuple[str, T]:
    """Send requests (one at a time) until the action scripted for `key` was used; returns the last one.

    Round-robin reaches every account within as many requests as there are accounts.
    """
    for _ in range(len(ACCOUNTS) + 1):
        content = prompt()
        result = await send(content)
        if not upstream.script.get(key):
            return content, result
    raise AssertionError(f"no request reached {key}")


def sse_events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out


def assert_openai_error(obj: Any) -> dict[str, Any]:
    assert isinstance(obj, dict) and set(obj) == {"error"}, obj
    err = obj["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    return err


async def read_first_event(resp: aiohttp.ClientResponse) -> bytes:
    """Read one whole SSE event (bounded), leaving the rest of the stream unread."""
    buf = b""
    async with asyncio.timeout(5):
        while b"\n\n" not in buf:
            line = await resp.content.readline()
            assert line, "stream ended before its first event"
            buf += line
    return buf


async def scrape(http: aiohttp.ClientSession, relay: Relay) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get(relay.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def label_values(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], label: str) -> set[str]:
    return {dict(lbls)[label] for (_, lbls) in metrics if label in dict(lbls)}


async def ledger_rows(db: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Poll the ledger's SQLite file until it holds at least `count` rows."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while True:
        conn = sqlite3.connect(db, timeout=5)
        try:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]
        finally:
            conn.close()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[[Relay], openai.AsyncOpenAI]]:
    """openai.AsyncOpenAI clients for any relay; closed at the end of the test."""
    made: list[openai.AsyncOpenAI] = []

    def make(relay: Relay) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def ask(client: openai.AsyncOpenAI, content: str) -> str:
    r = await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}])
    assert r.choices[0].message.content
    return r.choices[0].message.content


async def ask_stream(client: openai.AsyncOpenAI, content: str) -> str:
    stream = await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": content}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    return text


def channel(name: str, upstream: Upstream, keys: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": upstream.url, "keys": keys, "models": MODELS, **extra}


# -- 1. round-robin --------------------------------------------------------------------------------------


async def test_round_robin_spreads_requests_evenly_over_accounts(relay, upstream, sdk):
    client = sdk(relay)
    sem = asyncio.Semaphore(10)

    async def one() -> None:
        async with sem:
            await ask(client, prompt("rr"))

    await asyncio.gather(*(one() for _ in range(90)))
    counts = Counter(r.key for r in upstream.records)
    assert sum(counts.values()) == 90  # no request needed a second attempt
    assert set(counts) == set(ACCOUNTS)
    for key in ACCOUNTS:
        assert 27 <= counts[key] <= 33, counts


# -- 2. weights and priority tiers -----------------------------------------------------------------------


async def test_weighted_channels_split_traffic_by_weight(relay_factory, upstream, sdk):
    relay = await relay_factory(channels=[
        channel("heavy", upstream, ["heavy-0"], weight=2),
        channel("light", upstream, ["light-0"], weight=1),
    ])
    client = sdk(relay)
    for _ in range(90):
        await ask(client, prompt("w"))
    counts = Counter(r.key for r in upstream.records)
    assert sum(counts.values()) == 90
    assert 54 <= counts["heavy-0"] <= 66, counts
    assert 24 <= counts["light-0"] <= 36, counts


@pytest.mark.parametrize("outage", ["unauthorized", "rate_limited"])
async def test_priority_tier_takes_all_traffic_and_lower_tier_takes_over(relay_factory, upstream, sdk, http, outage):
    relay = await relay_factory(channels=[
        channel("backup", upstream, ["backup-0"], priority=0),
        channel("primary", upstream, ["primary-0", "primary-1"], priority=10),
    ])
    client = sdk(relay)
    for _ in range(10):
        await ask(client, prompt("p"))
    counts = Counter(r.key for r in upstream.records)
    assert counts == {"primary-0": 5, "primary-1": 5}

    # every account of the high tier goes out: the lower tier answers, the client never notices
    failure = status(401) if outage == "unauthorized" else status(429, retry_after=1)
    for key in ("primary-0", "primary-1"):
        upstream.script[key] = [failure]
    content = prompt("p")
    await ask(client, content)
    tried = attempts_of(upstream, content)
    assert sorted(tried[:2]) == ["primary-0", "primary-1"] and tried[2:] == ["backup-0"]
    out_since = len(upstream.records)
    for _ in range(6):
        await ask(client, prompt("p"))
    assert {r.key for r in upstream.records[out_since:]} == {"backup-0"}

    metrics = await scrape(http, relay)
    state = "disabled" if outage == "unauthorized" else "cooldown"
    assert sample(metrics, "relay_accounts_out_of_rotation", channel="primary", state=state) == 2

    if outage == "rate_limited":
        # once Retry-After has passed, the high tier takes the traffic back
        await asyncio.sleep(1.2)
        back_since = len(upstream.records)
        for _ in range(4):
            await ask(client, prompt("p"))
        assert {r.key for r in upstream.records[back_since:]} == {"primary-0", "primary-1"}


# -- 3. failover before the first byte -------------------------------------------------------------------


async def test_upstream_500_fails_over_to_another_account(relay, upstream, sdk):
    client = sdk(relay)
    upstream.script["acct-0"] = [status(500)]
    content, text = await until_consumed(upstream, "acct-0", lambda c: ask(client, c))
    assert text.startswith("Hello! This is the demo model.")
    tried = attempts_of(upstream, content)
    assert len(tried) == 2 and tried[0] == "acct-0" and tried[1] in ACCOUNTS and tried[1] != "acct-0"


async def test_429_fails_over_and_account_rests_until_retry_after(relay, upstream, sdk, http):
    client = sdk(relay)
    upstream.script["acct-1"] = [status(429, retry_after=2)]
    content, _ = await until_consumed(upstream, "acct-1", lambda c: ask(client, c))
    limited_at = time.monotonic()
    tried = attempts_of(upstream, content)
    assert len(tried) == 2 and tried[0] == "acct-1" and tried[1] != "acct-1"

    since = len(upstream.records)
    for _ in range(6):
        await ask(client, prompt("cool"))
    assert time.monotonic() - limited_at < 2, "the test machine is too slow for this check"
    during = Counter(r.key for r in upstream.records[since:])
    assert "acct-1" not in during and set(during) == {"acct-0", "acct-2"}
    metrics = await scrape(http, relay)
    assert sample(metrics, "relay_accounts_out_of_rotation", channel="fake", state="cooldown") == 1

    await asyncio.sleep(max(0.0, limited_at + 2.2 - time.monotonic()))
    since = len(upstream.records)
    for _ in range(3):
        await ask(client, prompt("back"))
    assert {r.key for r in upstream.records[since:]} == set(ACCOUNTS)


async def test_connection_reset_fails_over(relay, upstream, sdk):
    client = sdk(relay)
    upstream.script["acct-0"] = [reset()]
    content, text = await until_consumed(upstream, "acct-0", lambda c: ask(client, c))
    assert text.startswith("Hello! This is the demo model.")
    tried = attempts_of(upstream, content)
    assert len(tried) == 2 and tried[0] == "acct-0" and tried[1] != "acct-0"


async def test_first_byte_timeout_fails_over_on_a_stream(relay_factory, upstream, sdk):
    relay = await relay_factory(timeouts={"first_byte": 0.5, "idle": 5})
    client = sdk(relay)
    upstream.script["acct-0"] = [hang()]
    started = time.monotonic()
    content, text = await until_consumed(upstream, "acct-0", lambda c: ask_stream(client, c))
    assert time.monotonic() - started < 4
    assert text.startswith("Hello! This is the demo model.")
    tried = attempts_of(upstream, content)
    assert len(tried) == 2 and tried[0] == "acct-0" and tried[1] != "acct-0"
    # the relay hung up on the silent upstream instead of leaving the connection open
    await upstream.disconnects.wait(1, timeout=1.0)


async def test_unary_deadline_fails_over_and_hangs_up(relay_factory, upstream, sdk):
    relay = await relay_factory(timeouts={"unary": 0.5})
    client = sdk(relay)
    upstream.script["acct-0"] = [hang()]
    started = time.monotonic()
    content, text = await until_consumed(upstream, "acct-0", lambda c: ask(client, c))
    assert time.monotonic() - started < 4
    assert text.startswith("Hello! This is the demo model.")
    tried = attempts_of(upstream, content)
    assert len(tried) == 2 and tried[0] == "acct-0" and tried[1] != "acct-0"
    await upstream.disconnects.wait(1, timeout=1.0)
    deadlines = relay.app[PROXY]._upstream.deadlines  # noqa: SLF001
    assert deadlines._armed == 0  # noqa: SLF001 - nothing left armed once the calls ended


async def test_401_fails_over_and_account_leaves_rotation(relay, upstream, sdk, http):
    client = sdk(relay)
    upstream.script["acct-2"] = [status(401)]
    content, _ = await until_consumed(upstream, "acct-2", lambda c: ask(client, c))
    tried = attempts_of(upstream, content)
    assert len(tried) == 2 and tried[0] == "acct-2" and tried[1] != "acct-2"

    since = len(upstream.records)
    for _ in range(12):
        await ask(client, prompt("gone"))
    counts = Counter(r.key for r in upstream.records[since:])
    assert "acct-2" not in counts and counts == {"acct-0": 6, "acct-1": 6}

    metrics = await scrape(http, relay)
    assert sample(metrics, "relay_accounts_out_of_rotation", channel="fake", state="disabled") == 1


async def test_every_account_failing_gives_503_in_openai_shape(relay, upstream, sdk, http):
    for key in ACCOUNTS:
        upstream.script[key] = [status(500)]
    content = prompt("down")
    async with http.post(relay.v1 + "/chat/completions", json=body(content), headers=AUTH) as resp:
        raw = await resp.read()
        assert resp.status == 503
        assert resp.content_type == "application/json"
        assert int(resp.headers["Retry-After"]) >= 1
    assert sorted(attempts_of(upstream, content)) == sorted(ACCOUNTS)
    assert assert_openai_error(orjson.loads(raw))["code"] == "upstream_unavailable"
    text = raw.decode()
    assert "acct-" not in text
    assert upstream.url not in text and f":{upstream.server.port}" not in text

    for key in ACCOUNTS:
        upstream.script[key] = [status(500)]
    client = sdk(relay)
    with pytest.raises(openai.InternalServerError) as info:
        await ask(client, prompt("down"))
    assert info.value.status_code == 503
    assert "acct-" not in str(info.value.body) and "acct-" not in info.value.message


@pytest.mark.parametrize("clean", [False, True], ids=["aborted", "clean-eof"])
async def test_stream_ending_before_its_first_event_fails_over(relay, upstream, http, clean):
    # the legacy completions stream has no preamble event: truncate_after(0) sends headers and no event
    upstream.script["acct-0"] = [truncate_after(0, clean=clean)]

    async def send(content: str) -> bytes:
        req = {"model": "demo", "prompt": content, "stream": True}
        async with http.post(relay.v1 + "/completions", json=req, headers=AUTH) as resp:
            assert resp.status == 200
            return await resp.read()

    content, raw = await until_consumed(upstream, "acct-0", send)
    events = sse_events(raw)
    assert events[-1] == b"[DONE]" and not any(b'"error"' in e for e in events)
    tried = [r.key for r in upstream.records if content.encode() in r.body]
    assert len(tried) == 2 and tried[0] == "acct-0" and tried[1] != "acct-0"


@pytest.mark.parametrize("clean", [False, True], ids=["aborted", "clean-eof"])
async def test_chat_stream_breaking_after_its_preamble_is_an_error_not_a_retry(relay, upstream, sdk, clean):
    # truncate_after(0): the role-only preamble reached the client, then the upstream broke off. Bytes went
    # out, so the relay must not start over on another account: the client gets an error event.
    for key in ACCOUNTS:
        upstream.script[key] = [truncate_after(0, clean=clean)]
    client = sdk(relay)
    content = prompt("preamble")
    with pytest.raises(openai.APIError) as info:
        await ask_stream(client, content)
    assert not isinstance(info.value, openai.APIConnectionError)
    assert len(attempts_of(upstream, content)) == 1


# -- 4. no retry once bytes went out ---------------------------------------------------------------------


stall_after_2 = stall_after(2)


@pytest.mark.parametrize(
    "action", [stall_after_2, truncate_after(2), truncate_after(2, clean=True)], ids=["stall", "reset", "clean-eof"]
)
async def test_stream_failing_midway_ends_with_an_error_event(relay_factory, upstream, http, action):
    relay = await relay_factory(timeouts={"idle": 0.5})
    upstream.options.chunks = 6
    for key in ACCOUNTS:
        upstream.script[key] = [action]
    content = prompt("mid")
    started = time.monotonic()
    async with http.post(relay.v1 + "/chat/completions", json=body(content, stream=True), headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(5):
            raw = await resp.read()
    assert time.monotonic() - started < 2.5
    events = sse_events(raw)
    # the role event and two content events came through, then one error event; no [DONE]
    assert len(events) == 4, events
    for e in events[:3]:
        assert orjson.loads(e)["object"] == "chat.completion.chunk"
    error = assert_openai_error(orjson.loads(events[3]))
    assert ("stalled" in error["message"]) == (action is stall_after_2), error  # the idle deadline, named
    assert b"[DONE]" not in raw
    assert len(attempts_of(upstream, content)) == 1  # never retried once bytes went out


@pytest.mark.parametrize("action", [stall_after(2), truncate_after(2)], ids=["stall", "reset"])
async def test_sdk_raises_when_a_stream_fails_midway(relay_factory, upstream, sdk, action):
    relay = await relay_factory(timeouts={"idle": 0.5})
    upstream.options.chunks = 6
    for key in ACCOUNTS:
        upstream.script[key] = [action]
    client = sdk(relay)
    content = prompt("mid")
    received: list[str] = []
    stream = await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": content}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        async with asyncio.timeout(5):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert not isinstance(info.value, openai.APIConnectionError)  # an error event, not a cut connection
    assert "".join(received)  # the client had the first part of the answer
    assert len(attempts_of(upstream, content)) == 1


# -- 5. a client that goes away closes the upstream ------------------------------------------------------


@pytest.mark.parametrize("case", ["slow-stream", "stall-after-1", "stall-after-0"])
async def test_client_disconnect_mid_stream_closes_upstream_within_1s(relay, upstream, http, case):
    if case == "slow-stream":
        upstream.options.chunk_delay_ms = 500
        upstream.options.chunks = 50
    else:
        for key in ACCOUNTS:
            upstream.script[key] = [stall_after(int(case[-1]))]
    resp = await http.post(relay.v1 + "/chat/completions", json=body(prompt("bye"), stream=True), headers=AUTH)
    try:
        assert resp.status == 200
        first = await read_first_event(resp)
        assert b"chat.completion.chunk" in first
    finally:
        resp.close()  # the stream is unfinished: this closes the connection
    await upstream.disconnects.wait(1, timeout=1.0)


@pytest.mark.parametrize(
    ("stream", "action"), [(True, hang()), (False, delay(5000))], ids=["stream", "non-stream"]
)
async def test_client_giving_up_before_headers_closes_upstream_within_1s(relay, upstream, http, stream, action):
    for key in ACCOUNTS:
        upstream.script[key] = [action]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await http.post(relay.v1 + "/chat/completions", json=body(prompt("bye"), stream=stream), headers=AUTH)
    await upstream.disconnects.wait(1, timeout=1.0)


# -- 6. the ledger ---------------------------------------------------------------------------------------


async def test_ledger_has_one_row_per_request_with_its_outcome(relay, upstream, http):
    secret = "zebra-lantern-quartz"  # text that must never reach the ledger
    expected: dict[str, dict[str, Any]] = {}

    async def send(content: str, stream: bool = False) -> tuple[str, int, bytes]:
        async with http.post(relay.v1 + "/chat/completions", json=body(content, stream), headers=AUTH) as resp:
            return resp.headers["x-request-id"], resp.status, await resp.read()

    # a plain success
    content = prompt(secret)
    rid, code, _ = await send(content)
    assert code == 200
    expected[rid] = {"status": 200, "end_reason": "ok", "channel": "fake",
                     "account": int(attempts_of(upstream, content)[-1][-1]), "attempts": 1}

    # a success after one upstream 500 (requests go round until one reaches acct-1)
    upstream.script["acct-1"] = [status(500)]
    for _ in range(len(ACCOUNTS)):
        if not upstream.script["acct-1"]:
            break
        content = prompt(secret)
        rid, code, _ = await send(content)
        assert code == 200
        tried = attempts_of(upstream, content)
        expected[rid] = {"status": 200, "end_reason": "ok", "channel": "fake",
                         "account": int(tried[-1][-1]), "attempts": len(tried)}
    assert not upstream.script["acct-1"]
    assert sum(e.get("attempts") == 2 for e in expected.values()) == 1

    # a client that leaves mid-stream
    for key in ACCOUNTS:
        upstream.script[key] = [stall_after(1)]
    content = prompt(secret)
    resp = await http.post(relay.v1 + "/chat/completions", json=body(content, stream=True), headers=AUTH)
    try:
        assert resp.status == 200
        rid = resp.headers["x-request-id"]
        await read_first_event(resp)
    finally:
        resp.close()
    await upstream.disconnects.wait(1, timeout=1.0)
    upstream.script.clear()
    expected[rid] = {"status": 200, "end_reason": "client_disconnected", "channel": "fake",
                     "account": int(attempts_of(upstream, content)[-1][-1]), "attempts": 1}

    # every account failing: the relay answers 503
    for key in ACCOUNTS:
        upstream.script[key] = [status(500)]
    rid, code, _ = await send(prompt(secret))
    assert code == 503
    expected[rid] = {"status": 503, "end_reason": "upstream_error", "channel": "fake", "attempts": 3}

    # every account rate limited: the relay itself answers 429, first after trying them, then at once
    for key in ACCOUNTS:
        upstream.script[key] = [status(429, retry_after=30)]
    rid, code, _ = await send(prompt(secret))
    assert code == 429
    expected[rid] = {"status": 429, "end_reason": "rejected", "channel": "fake", "attempts": 3}
    seen = len(upstream.records)
    rid, code, raw = await send(prompt(secret), stream=True)
    assert code == 429 and len(upstream.records) == seen
    assert assert_openai_error(orjson.loads(raw))["code"] == "rate_limit_exceeded"
    expected[rid] = {"status": 429, "end_reason": "rejected", "attempts": 0}

    rows = await ledger_rows(relay.database, len(expected))
    by_id = {r["request_id"]: r for r in rows}
    assert len(rows) == len(by_id) == len(expected), rows
    assert set(by_id) == set(expected)
    for rid, want in expected.items():
        row = by_id[rid]
        assert {k: row[k] for k in want} == want, row
        assert row["model"] == "demo" and row["endpoint"] == "chat/completions"
        assert row["key_id"] and CLIENT_KEY not in str(row["key_id"])

    # no prompt text, no client key and no upstream key anywhere in the database files
    for row in rows:
        flat = " ".join(map(str, row.values()))
        assert secret not in flat and "acct-" not in flat
    for path in Path(relay.database).parent.glob(Path(relay.database).name + "*"):
        data = path.read_bytes()
        assert secret.encode() not in data and CLIENT_KEY.encode() not in data and b"acct-" not in data, path


# -- 7. /metrics, /healthz, /status ----------------------------------------------------------------------


async def test_metrics_expose_requests_latency_errors_tokens_and_ledger(relay, upstream, sdk, http):
    client = sdk(relay)
    await ask(client, prompt("m"))
    await ask_stream(client, prompt("m"))
    upstream.script["acct-0"] = [status(500)]
    await until_consumed(upstream, "acct-0", lambda c: ask(client, c))
    # an unknown model: answered 404, and its name does not become a label
    bogus = "no-such-model-4f7a"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model=bogus, messages=[{"role": "user", "content": "x"}])

    metrics = await scrape(http, relay)
    ok = sample(metrics, "relay_requests_total", model="demo", channel="fake", status="2xx")
    assert ok is not None and ok >= 3
    ttft = sample(metrics, "relay_time_to_first_token_seconds_count", model="demo")
    assert ttft is not None and ttft >= 1
    assert sample(metrics, "relay_active_streams") == 0
    errors = sample(metrics, "relay_upstream_errors_total", channel="fake", reason="server")
    assert errors is not None and errors >= 1
    prompt_tokens = sample(metrics, "relay_tokens_total", model="demo", kind="prompt")
    completion_tokens = sample(metrics, "relay_tokens_total", model="demo", kind="completion")
    assert prompt_tokens and completion_tokens
    assert sample(metrics, "relay_ledger_pending_rows") is not None
    names = {name for name, _ in metrics}
    assert all(bogus not in str(key) for key in metrics) and bogus not in str(names)
    assert label_values(metrics, "model") <= set(MODELS) | {"other"}


async def test_active_streams_gauge_counts_open_streams(relay, upstream, http):
    for key in ACCOUNTS:
        upstream.script[key] = [stall_after(1)]
    resp = await http.post(relay.v1 + "/chat/completions", json=body(prompt("live"), stream=True), headers=AUTH)
    try:
        await read_first_event(resp)
        assert sample(await scrape(http, relay), "relay_active_streams") == 1
    finally:
        resp.close()
    await upstream.disconnects.wait(1, timeout=1.0)
    deadline = time.monotonic() + 2
    while sample(await scrape(http, relay), "relay_active_streams") != 0:
        assert time.monotonic() < deadline, "relay_active_streams did not go back to 0"
        await asyncio.sleep(0.05)


async def test_healthz(relay, http):
    async with http.get(relay.url + "/healthz") as resp:
        assert resp.status == 200
