"""Per-key billing over real HTTP and a real SQLite file: balances hold under concurrency and kill -9, each
key error has its own OpenAI-shaped answer, revokes and top-ups made in the store take effect within 1 s,
and no client key is ever written to the database in plaintext.

Keys are created directly in the store (as an operator's tool would); the running relay picks them up
through its key cache poller. Prices are chosen so that a chat request with max_tokens=8 has a worst case
of exactly $1 and (the fake upstream answering with 8 completion tokens) costs exactly that: float sums
of whole dollars are exact, so balances can be checked to the request.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import yaml

from relay.auth import new_secret
from relay.config import hash_key
from relay.store import Store
from relay.types import KeyRecord
from tests.conftest import CLIENT_KEY, RelayFactory
from tests.procs import Answer, Processes, auth, exit_code

ROOT = Path(__file__).resolve().parents[2]
# input is free and 8 output tokens cost 8 * 125000 / 1e6 = $1 exactly
PRICES = {"demo": {"input": 0, "output": 125000}}
MAX_TOKENS = 8
UNIT = 1.0  # the worst case (and the actual cost) of one chat request below
MSGS = [{"role": "user", "content": "How much does this cost?"}]
ERROR_FIELDS = {"message", "type", "param", "code"}

OpenStore = Callable[[str], Awaitable[Store]]


# -- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture
async def stores() -> AsyncIterator[OpenStore]:
    """Open a second connection to a relay's database (closed after the test)."""
    opened: list[Store] = []

    async def open_(path: str) -> Store:
        s = Store(path)
        await s.open()
        opened.append(s)
        return s

    yield open_
    for s in opened:
        await s.close()


async def add_key(store: Store, **fields: Any) -> tuple[str, KeyRecord]:
    """A new key in the store; returns its secret (which the store never sees) and its record."""
    secret = new_secret()
    record = KeyRecord(
        id="key_" + uuid.uuid4().hex[:16], name=fields.pop("name", "billing-test"), key_hash=hash_key(secret),
        prefix=secret[:7], **fields,
    )
    return secret, await store.create_key(record)


async def chat(
    http: aiohttp.ClientSession, url: str, secret: str, *, stream: bool = False, model: str = "demo",
) -> Answer:
    req = {"model": model, "messages": MSGS, "max_tokens": MAX_TOKENS, "stream": stream}
    started = time.monotonic()
    async with http.post(url + "/v1/chat/completions", json=req, headers=auth(secret)) as resp:
        body = await resp.read()
        return Answer(resp.status, dict(resp.headers), body, started, time.monotonic())


async def wait_known(http: aiohttp.ClientSession, url: str, secret: str, timeout: float = 2.0) -> Answer:
    """Wait until the relay's key cache knows the key (any answer but 401 invalid_api_key)."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url + "/v1/models", headers=auth(secret)) as resp:
            a = Answer(resp.status, dict(resp.headers), await resp.read())
        if a.code != "invalid_api_key":
            return a
        assert time.monotonic() < deadline, "the relay did not pick up a key created in the store"
        await asyncio.sleep(0.02)


def assert_openai_error(a: Answer, status: int, code: str) -> dict[str, Any]:
    assert a.status == status, (a.status, a.body)
    assert a.headers.get("Content-Type", "").startswith("application/json")
    obj = orjson.loads(a.body)
    assert set(obj) == {"error"}, obj
    err = obj["error"]
    assert set(err) == ERROR_FIELDS, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert a.headers.get("x-should-retry") == "false", a.headers
    return err


async def ledger_of(store: Store, key_id: str) -> tuple[int, float]:
    async with store.db.execute(
        "SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM usage WHERE key_id = ?", (key_id,)
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


async def flushed(store: Store, key_id: str, rows: int, timeout: float = 5.0) -> tuple[float, float]:
    """Wait until the ledger holds `rows` rows for the key; returns (ledger sum of cost, keys.spent_usd)."""
    deadline = time.monotonic() + timeout
    while True:
        n, total = await ledger_of(store, key_id)
        if n >= rows:
            assert n == rows, f"{n} ledger rows for {rows} requests"
            k = await store.get_key(key_id)
            assert k is not None
            return total, k.spent_usd
        assert time.monotonic() < deadline, f"only {n} of {rows} ledger rows were written"
        await asyncio.sleep(0.02)


# -- a. concurrency ---------------------------------------------------------------------------------------


async def test_500_concurrent_requests_never_overspend_a_key(relay_factory: RelayFactory, stores: OpenStore) -> None:
    relay = await relay_factory(prices=PRICES)
    store = await stores(relay.database)
    granted = 50 * UNIT
    secret, key = await add_key(store, granted_usd=granted)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await wait_known(http, relay.url, secret)
        answers = await asyncio.gather(
            *(chat(http, relay.url, secret, stream=i % 2 == 1) for i in range(500))
        )
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    # every request's worst case is $1 and it costs exactly that: exactly 50 fit, however they interleave
    assert len(ok) == 50, sorted({(a.status, a.code) for a in answers})
    for a in ok:
        if a.headers.get("Content-Type", "").startswith("text/event-stream"):
            assert a.body.endswith(b"data: [DONE]\n\n")
        else:
            assert orjson.loads(a.body)["usage"]["completion_tokens"] == MAX_TOKENS
    for a in refused:
        err = assert_openai_error(a, 429, "insufficient_quota")
        assert err["type"] == "insufficient_quota"

    # the SDK takes the answer as final: x-should-retry: false means one attempt despite max_retries
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=secret, max_retries=2, timeout=10)
    try:
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="demo", messages=MSGS, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
        assert e.value.code == "insufficient_quota"
    finally:
        await client.close()

    total, spent = await flushed(store, key.id, 501)  # one row per request, refused ones included
    assert total <= granted + 1e-9
    assert abs(total - spent) <= 1e-9
    assert spent == len(ok) * UNIT


# -- b. kill -9 under load ------------------------------------------------------------------------------


@pytest.fixture
def processes(tmp_path: Path) -> Any:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def _balances(db: Path) -> tuple[dict[str, tuple[float | None, float]], dict[str, float]]:
    """(key id -> (granted, spent)) and (key id -> ledger sum of cost), read straight from the file."""
    conn = sqlite3.connect(db)
    try:
        keys = {k: (g, s) for k, g, s in conn.execute("SELECT id, granted_usd, spent_usd FROM keys")}
        ledger = {k: float(v) for k, v in conn.execute("SELECT key_id, SUM(cost_usd) FROM usage GROUP BY key_id")}
    finally:
        conn.close()
    return keys, ledger


def _assert_consistent(db: Path) -> dict[str, tuple[float | None, float]]:
    keys, ledger = _balances(db)
    for key_id, (granted, spent) in keys.items():
        assert abs(spent - ledger.get(key_id, 0.0)) <= 1e-9, (key_id, spent, ledger.get(key_id))
        if granted is not None:
            assert spent <= granted + 1e-9, (key_id, spent, granted)
    return keys


async def test_kill_9_under_load_keeps_spent_equal_to_the_ledger(processes: Processes, tmp_path: Path) -> None:
    upstream = await processes.fake_upstream("--chunks", "8", "--chunk-delay-ms", "15")
    db = tmp_path / "relay.db"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "shutdown_grace": 5},
        "database": str(db),
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],  # unlimited
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream,
                      "keys": ["acct-0", "acct-1"], "models": ["demo"]}],
        "prices": PRICES,
        "ledger": {"flush_interval": 0.05},
        "log_level": "warning",
    }))
    granted = 120 * UNIT
    store = Store(str(db))
    await store.open()
    try:
        secret, key = await add_key(store, granted_usd=granted)
    finally:
        await store.close()
    secrets = [secret, CLIENT_KEY]

    # phase 1: load until the relay dies under it
    proc, url = await processes.relay(config)
    ok1 = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=aiohttp.ClientTimeout(total=10)
    ) as http:
        await wait_known(http, url, secret)

        async def worker(i: int) -> None:
            nonlocal ok1
            n = 0
            while True:
                try:
                    a = await chat(http, url, secrets[i % 2], stream=n % 2 == 0)
                except (TimeoutError, aiohttp.ClientError):
                    return  # the relay is gone
                n += 1
                if a.status == 200 and i % 2 == 0:
                    ok1 += 1

        workers = [asyncio.create_task(worker(i)) for i in range(16)]
        await asyncio.sleep(0.8)
        proc.send_signal(signal.SIGKILL)  # this PID only
        assert await exit_code(proc, 5) == -signal.SIGKILL
        await asyncio.wait_for(asyncio.gather(*workers), 10)
    assert ok1 > 0, "no request completed before the kill"

    keys = _assert_consistent(db)  # whatever was written is whole: rows and spent in one transaction
    spent1 = keys[key.id][1]
    assert spent1 <= ok1 * UNIT  # only what was flushed: the rest is in the journal

    # phase 2: restart on the same database and port (the same balance lease holder, which takes back the
    # slice the killed process held at once). Before serving it writes what the killed one left in its
    # journal: then every request a client saw answered is charged, and the key's remaining balance is
    # granted - spent so far
    proc, url = await processes.relay(config, port=int(url.rsplit(":", 1)[1]))
    keys = _assert_consistent(db)
    spent1 = keys[key.id][1]
    assert spent1 >= ok1 * UNIT
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=30)) as http:
        answers = await asyncio.gather(
            *(chat(http, url, secret, stream=i % 2 == 0) for i in range(150)),
            *(chat(http, url, CLIENT_KEY, stream=i % 2 == 0) for i in range(30)),
        )
    limited, unlimited = answers[:150], answers[150:]
    ok2 = sum(a.status == 200 for a in limited)
    for a in limited:
        if a.status != 200:
            assert_openai_error(a, 429, "insufficient_quota")
    assert all(a.status == 200 for a in unlimited)
    assert ok2 == round(granted - spent1), (ok2, granted, spent1)

    proc.send_signal(signal.SIGTERM)
    assert await exit_code(proc, 15) == 0, processes.log()
    keys = _assert_consistent(db)
    assert keys[key.id][1] == spent1 + ok2 * UNIT
    assert keys[key.id][1] <= granted
    assert keys["cfg-test"][0] is None and keys["cfg-test"][1] > 0


# -- c. each key error ------------------------------------------------------------------------------------


async def test_each_key_error_has_its_own_openai_error(relay_factory: RelayFactory, stores: OpenStore) -> None:
    relay = await relay_factory(prices=PRICES)
    store = await stores(relay.database)
    expired, _ = await add_key(store, name="expired", expires_at=time.time() - 60)
    revoked, revoked_key = await add_key(store, name="revoked")
    exhausted, _ = await add_key(store, name="exhausted", granted_usd=UNIT)
    mini_only, _ = await add_key(store, name="mini-only", models=("gpt-4o-mini",))
    far_away, _ = await add_key(store, name="far-away", ip_allow=("10.0.0.0/8",))
    codes: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        for s in (expired, revoked, exhausted, mini_only, far_away):
            await wait_known(http, relay.url, s)

        err = assert_openai_error(await chat(http, relay.url, expired), 401, "key_expired")
        codes["expired"] = err["code"]

        assert (await chat(http, relay.url, revoked)).status == 200
        await store.update_key(revoked_key.id, {"status": "revoked"})
        deadline = time.monotonic() + 1.0
        while (a := await chat(http, relay.url, revoked)).status == 200:
            assert time.monotonic() < deadline, "a revoke took more than 1 s"
            await asyncio.sleep(0.02)
        codes["revoked"] = assert_openai_error(a, 401, "key_revoked")["code"]

        assert (await chat(http, relay.url, exhausted)).status == 200  # spends the whole $1
        codes["exhausted"] = assert_openai_error(await chat(http, relay.url, exhausted), 429, "insufficient_quota")["code"]

        assert (await chat(http, relay.url, mini_only, model="gpt-4o-mini")).status == 200
        codes["model"] = assert_openai_error(await chat(http, relay.url, mini_only), 403, "model_not_allowed")["code"]

        codes["ip"] = assert_openai_error(await chat(http, relay.url, far_away), 403, "ip_not_allowed")["code"]

        random_key = await chat(http, relay.url, new_secret())
        real = exhausted
        i = len(real) // 2
        near_miss = real[:i] + ("A" if real[i] != "A" else "B") + real[i + 1:]
        one_off = await chat(http, relay.url, near_miss)
        codes["unknown"] = assert_openai_error(random_key, 401, "invalid_api_key")["code"]
        assert_openai_error(one_off, 401, "invalid_api_key")
        assert random_key.body == one_off.body  # nothing tells a near miss from a random guess
        assert near_miss not in random_key.body.decode() and real not in one_off.body.decode()

    assert len(set(codes.values())) == len(codes), codes

    # the official SDK maps each one to its own exception, carrying the code
    expect = [
        (expired, "demo", openai.AuthenticationError, "key_expired"),
        (revoked, "demo", openai.AuthenticationError, "key_revoked"),
        (exhausted, "demo", openai.RateLimitError, "insufficient_quota"),
        (mini_only, "demo", openai.PermissionDeniedError, "model_not_allowed"),
        (far_away, "demo", openai.PermissionDeniedError, "ip_not_allowed"),
        (near_miss, "demo", openai.AuthenticationError, "invalid_api_key"),
    ]
    for secret, model, exc, code in expect:
        client = openai.AsyncOpenAI(base_url=relay.v1, api_key=secret, max_retries=0, timeout=10)
        try:
            with pytest.raises(exc) as e:
                await client.chat.completions.create(model=model, messages=MSGS, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
            assert e.value.code == code
        finally:
            await client.close()


# -- d. revoke under load -----------------------------------------------------------------------------------


async def test_revoke_takes_effect_within_1s_under_load(relay_factory: RelayFactory, stores: OpenStore) -> None:
    relay = await relay_factory()
    store = await stores(relay.database)
    secret, key = await add_key(store)  # unlimited
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as http:
        await wait_known(http, relay.url, secret)
        stop_at = time.monotonic() + 60

        async def loop(i: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                answers.append(await chat(http, relay.url, secret, stream=(i + n) % 2 == 0))
                n += 1

        workers = [asyncio.create_task(loop(i)) for i in range(8)]
        await asyncio.sleep(0.4)
        revoked_at = time.monotonic()
        await store.update_key(key.id, {"status": "revoked"})
        stop_at = revoked_at + 1.6
        await asyncio.wait_for(asyncio.gather(*workers), 15)

    before = [a for a in answers if a.ended < revoked_at]
    after = [a for a in answers if a.started >= revoked_at + 1.0]
    assert len(before) > 20 and all(a.status == 200 for a in before)
    assert len(after) > 20, len(after)
    for a in after:
        assert_openai_error(a, 401, "key_revoked")
    first = min(a.started for a in answers if a.status == 401)
    assert first - revoked_at < 1.0
    assert {(a.status, a.code) for a in answers} <= {(200, None), (401, "key_revoked")}


# -- e. top-up ------------------------------------------------------------------------------------------


async def test_top_up_revives_an_exhausted_key_and_is_never_overwritten(
    relay_factory: RelayFactory, stores: OpenStore
) -> None:
    relay = await relay_factory(prices=PRICES)
    store = await stores(relay.database)
    secret, key = await add_key(store, granted_usd=2 * UNIT)
    requests = 0
    async with aiohttp.ClientSession() as http:
        await wait_known(http, relay.url, secret)
        assert [(await chat(http, relay.url, secret)).status for _ in range(3)] == [200, 200, 429]
        requests += 3
        total, spent = await flushed(store, key.id, requests)
        assert spent == total == 2 * UNIT

        topped = await store.top_up(key.id, 3 * UNIT)
        assert topped is not None and topped.granted_usd == 5 * UNIT
        deadline = time.monotonic() + 1.0
        while True:
            a = await chat(http, relay.url, secret)
            requests += 1
            if a.status == 200:
                break
            assert_openai_error(a, 429, "insufficient_quota")
            assert time.monotonic() < deadline, "a top-up took more than 1 s"
            await asyncio.sleep(0.02)
        statuses = [(await chat(http, relay.url, secret, stream=True)).status for _ in range(3)]
        requests += 3
        assert statuses == [200, 200, 429]  # $3 more: three requests in all

    total, spent = await flushed(store, key.id, requests)
    assert spent == total == 5 * UNIT
    await asyncio.sleep(0.2)  # a few more flush intervals
    k = await store.get_key(key.id)
    assert k is not None
    assert k.granted_usd == 5 * UNIT  # the relay's spent writes left the operator's top-up alone
    assert k.spent_usd == 5 * UNIT


# -- f. no plaintext keys on disk -----------------------------------------------------------------------------


async def test_database_holds_no_plaintext_client_key(relay_factory: RelayFactory, stores: OpenStore) -> None:
    relay = await relay_factory(prices=PRICES)
    store = await stores(relay.database)
    secret, key = await add_key(store, granted_usd=3 * UNIT)
    near_miss = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    async with aiohttp.ClientSession() as http:
        await wait_known(http, relay.url, secret)
        for stream in (False, True):
            assert (await chat(http, relay.url, secret, stream=stream)).status == 200
            assert (await chat(http, relay.url, CLIENT_KEY, stream=stream)).status == 200
        assert (await chat(http, relay.url, near_miss)).status == 401
    await flushed(store, key.id, 2)
    await flushed(store, "cfg-test", 2)

    data = b""
    for suffix in ("", "-wal", "-shm"):
        path = Path(relay.database + suffix)
        if path.exists():
            data += path.read_bytes()
    assert hash_key(secret).encode() in data  # the right file: the key is there, as its hash
    for plaintext in (secret, CLIENT_KEY, near_miss):
        assert plaintext.encode() not in data
        assert plaintext[7:].encode() not in data  # not even past the displayed prefix


@pytest.mark.parametrize("k", [1, 3])
async def test_disconnect_after_k_chunks_is_charged_prompt_plus_delivered_text(
    relay_factory: RelayFactory, upstream: Any, k: int
) -> None:
    """No upstream usage arrives when the client leaves: the charge is the prompt plus what was delivered."""
    from relay import tokens

    relay = await relay_factory(prices={"demo": {"input": 2, "output": 3}})
    upstream.options.chunk_delay_ms = 300  # the relay sees the client leave long before the next chunk
    upstream.options.chunks = 12
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Count my tokens, please."}]}
    received: list[str] = []
    async with aiohttp.ClientSession() as http:
        resp = await http.post(relay.v1 + "/chat/completions", json=body, headers=auth(CLIENT_KEY))
        assert resp.status == 200
        request_id = resp.headers["x-request-id"]
        buf = b""
        while len(received) < k:
            buf += await resp.content.readany()
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                delta = orjson.loads(event.removeprefix(b"data: "))["choices"][0]["delta"]
                if delta.get("content"):
                    received.append(delta["content"])
        resp.close()  # leave mid-stream
    delivered = "".join(received[:k])
    assert len(received) == k and delivered
    expected_completion = tokens.count_text(delivered, "demo")
    expected_prompt = tokens.prompt_tokens("chat/completions", body)
    row = None
    for _ in range(100):
        with sqlite3.connect(relay.database) as db:
            row = db.execute(
                "SELECT end_reason, prompt_tokens, completion_tokens, usage_source, cost_usd FROM usage "
                "WHERE request_id = ?", (request_id,),
            ).fetchone()
        if row:
            break
        await asyncio.sleep(0.05)
    assert row is not None
    end_reason, prompt, completion, source, cost = row
    assert end_reason == "client_disconnected" and source == "estimate"
    assert (prompt, completion) == (expected_prompt, expected_completion)
    assert cost == pytest.approx((prompt * 2 + completion * 3) / 1e6, abs=1e-12)
