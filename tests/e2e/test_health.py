"""Account health: probes take failing accounts out and bring recovered ones back, quota answers take an
account out, transitions reach the webhook, and outages are told apart from rate limits.

The relay runs as in production in front of the fake OpenAI upstream, whose `key_answers` switch one account's
answers on and off; probes every 0.2 s. Clients: the official openai SDK (max_retries=0) and aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.fake_upstream import status
from relay.app import ROUTER
from relay.router import Account
from tests.conftest import ACCOUNTS, CLIENT_KEY, Relay, RelayFactory, Upstream
from tests.procs import free_port

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN_TOKEN = "admin-" + "z9" * 16
HEALTH = {"enabled": True, "interval": 0.2, "timeout": 2, "failures_to_disable": 2, "successes_to_enable": 2}
BODY = {"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": "hello there"}]}
# OpenAI's answer for an account without credit (HTTP 429, as its API sends it)
QUOTA = {"error": {
    "message": "You exceeded your current quota, please check your plan and billing details. For more "
               "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def account(relay: Relay, key: str) -> Account:
    return next(a for a in relay.app[ROUTER].accounts if a.key == key)


async def within(seconds: float, cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        await asyncio.sleep(0.02)


def client_requests(upstream: Upstream, key: str | None = None) -> int:
    """Requests at the fake that came from clients (probes ask for 'hi' with max_tokens 1)."""
    return sum(1 for r in upstream.records if b"hello there" in r.body and (key is None or r.key == key))


def probes_at(upstream: Upstream, key: str | None = None) -> int:
    return sum(
        1 for r in upstream.records
        if r.path.endswith("/chat/completions") and b'"max_tokens":1,' in r.body and (key is None or r.key == key)
    )


async def chat(http: aiohttp.ClientSession, relay: Relay) -> tuple[int, dict[str, str], Any]:
    async with http.post(relay.v1 + "/chat/completions", json=BODY, headers=AUTH) as r:
        return r.status, dict(r.headers), orjson.loads(await r.read())


async def test_a_refused_account_is_taken_out_by_traffic_and_back_after_passing_probes(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    relay = await relay_factory(health=HEALTH)
    upstream.options.key_answers["acct-1"] = status(401)
    for _ in range(4):  # round-robin reaches acct-1; its request fails over and succeeds
        assert (await chat(http, relay))[0] == 200
    acc = account(relay, "acct-1")
    assert acc.state == "out" and "credential refused (HTTP 401)" in acc.out_reason
    await asyncio.sleep(0.6)  # out accounts are probed every 0.05 s: they stay out while refused
    assert acc.state == "out" and probes_at(upstream, "acct-1") >= 2
    del upstream.options.key_answers["acct-1"]
    await within(3.0, lambda: acc.state == "active", "acct-1 back after 2 passing probes")
    mark = client_requests(upstream, "acct-1")
    for _ in range(6):
        assert (await chat(http, relay))[0] == 200
    assert client_requests(upstream, "acct-1") - mark == 2  # in the rotation again
    async with http.get(relay.url + "/metrics") as r:
        text = await r.text()
    assert 'relay_account_transitions_total{channel="fake",from_state="active",reason="auth",to_state="out"} 1.0' in text
    assert 'relay_account_transitions_total{channel="fake",from_state="out",reason="probes_passed",to_state="active"} 1.0' in text
    assert 'relay_accounts{channel="fake",state="active"} 3.0' in text


async def test_a_refused_account_is_found_by_probes_alone(
    relay_factory: RelayFactory, upstream: Upstream
) -> None:
    upstream.options.key_answers["acct-2"] = status(401)
    relay = await relay_factory(health=HEALTH)
    await within(3.0, lambda: account(relay, "acct-2").state == "out", "acct-2 out after its probe")
    assert client_requests(upstream) == 0
    assert [a.state for a in relay.app[ROUTER].accounts] == ["active", "active", "out"]


async def test_an_account_whose_probes_fail_n_times_is_taken_out_without_traffic(
    relay_factory: RelayFactory, upstream: Upstream
) -> None:
    upstream.options.key_answers["acct-0"] = status(500)
    relay = await relay_factory(health=HEALTH)
    acc = account(relay, "acct-0")
    await within(3.0, lambda: acc.state == "out", "acct-0 out after 2 failed probes")
    assert client_requests(upstream) == 0 and probes_at(upstream, "acct-0") >= 2
    assert acc.out_reason == "2 probes in a row failed (HTTP 500 server_error)"
    del upstream.options.key_answers["acct-0"]
    await within(3.0, lambda: acc.state == "active", "acct-0 back")


async def test_an_unreachable_channel_is_taken_out_and_requests_get_503(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connections are refused
    channel = {"name": "dead", "type": "openai", "base_url": dead, "keys": ["dead-0", "dead-1"], "models": ["demo"]}
    relay = await relay_factory(health={**HEALTH, "interval": 1.0}, channels=[channel])
    accounts = relay.app[ROUTER].accounts
    await within(5.0, lambda: all(a.state == "out" for a in accounts), "both accounts out")
    assert all(a.out_reason.startswith("2 probes in a row failed (could not connect") for a in accounts)
    code, headers, doc = await chat(http, relay)
    assert code == 503 and doc["error"]["code"] == "upstream_unavailable"
    assert "Every upstream account for model 'demo' is failing or out of rotation" in doc["error"]["message"]
    assert headers["Retry-After"] == "1"  # none comes back on its own: the next probe may bring one back
    assert "dead-" not in orjson.dumps(doc).decode()


async def test_an_insufficient_quota_answer_takes_the_account_out_and_the_request_fails_over(
    relay_factory: RelayFactory, upstream: Upstream
) -> None:
    relay = await relay_factory()  # no probes: traffic alone
    upstream.options.key_answers["acct-0"] = status(429, body=QUOTA)
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    try:
        for _ in range(3):
            answer = await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
            assert answer.choices[0].message.content
        acc = account(relay, "acct-0")
        assert acc.state == "out" and "out of quota" in acc.out_reason
        assert client_requests(upstream, "acct-0") == 1
        for _ in range(6):
            await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
        assert client_requests(upstream, "acct-0") == 1  # never tried again
    finally:
        await client.close()


async def test_every_account_failing_gives_503_and_upstream_429s_give_429(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    relay = await relay_factory(retry={"failure_threshold": 1, "failure_cooldown": 30})
    for key in ACCOUNTS:
        upstream.options.key_answers[key] = status(500)
    code, headers, doc = await chat(http, relay)
    assert code == 503 and doc["error"]["code"] == "upstream_unavailable"
    assert 29 <= int(headers["Retry-After"]) <= 30
    mark = len(upstream.records)
    code, headers, doc = await chat(http, relay)  # every account rests after its failure: answered at once
    assert code == 503 and doc["error"]["code"] == "upstream_unavailable" and len(upstream.records) == mark
    assert "failing or out of rotation" in doc["error"]["message"] and 29 <= int(headers["Retry-After"]) <= 30

    limited = await relay_factory()
    for key in ACCOUNTS:
        upstream.options.key_answers[key] = status(429, retry_after=20)
    code, headers, doc = await chat(http, limited)
    assert code == 429 and doc["error"]["code"] == "rate_limit_exceeded" and headers["Retry-After"] == "20"
    code, headers, doc = await chat(http, limited)  # resting after the 429s: still a rate limit
    assert code == 429 and doc["error"]["code"] == "rate_limit_exceeded"
    assert 19 <= int(headers["Retry-After"]) <= 20


async def test_the_webhook_receives_every_transition_without_a_key(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    relay = await relay_factory(health={**HEALTH, "webhook_url": str(server.make_url("/hook"))})
    upstream.options.key_answers["acct-1"] = status(401)
    await within(3.0, lambda: len(received) == 1, "the webhook told of acct-1 going out")
    del upstream.options.key_answers["acct-1"]
    await within(3.0, lambda: len(received) == 2, "the webhook told of acct-1 coming back")
    bodies = [orjson.loads(b) for b in received]
    assert [(b["channel"], b["account"], b["from"], b["to"]) for b in bodies] == [
        ("fake", 1, "active", "out"), ("fake", 1, "out", "active")]
    assert set(bodies[0]) == {"channel", "account", "from", "to", "reason", "at"}
    assert "credential refused" in bodies[0]["reason"] and abs(bodies[0]["at"] - time.time()) < 30
    assert not any(b"acct-" in b for b in received)
    async with http.get(relay.url + "/metrics") as r:
        assert 'relay_health_webhook_total{result="sent"} 2.0' in await r.text()


async def test_admin_channel_test_and_health_view(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    relay = await relay_factory(admin_token=ADMIN_TOKEN)  # scheduled probes off: only the admin call probes
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    upstream.options.key_answers["acct-2"] = status(401)
    async with http.post(relay.url + "/admin/channels/fake/test", headers=admin) as r:
        assert r.status == 200
        raw = await r.read()
    doc = orjson.loads(raw)
    assert doc["channel"] == "fake"
    assert [(a["index"], a["state"], a["ok"], a["status"]) for a in doc["accounts"]] == [
        (0, "active", True, 200), (1, "active", True, 200), (2, "out", False, 401)]
    assert doc["accounts"][2]["error"] == "HTTP 401 invalid_api_key"
    assert all(set(a) == {"index", "state", "ok", "status", "latency_ms", "error"} for a in doc["accounts"])
    assert probes_at(upstream) == 3

    async with http.get(relay.url + "/admin/health", headers=admin) as r:
        assert r.status == 200
        raw_health = await r.read()
    view = orjson.loads(raw_health)
    (fake,) = view["channels"]
    out = fake["accounts"][2]
    assert fake["name"] == "fake" and out["state"] == "out" and out["reason"] == "credential refused (HTTP 401)"
    assert out["last_probe"]["kind"] == "auth" and out["last_probe"]["ok"] is False
    assert fake["accounts"][0]["last_probe"]["kind"] == "ok" and fake["accounts"][0]["ok_streak"] == 1
    for text in (raw, raw_health):
        assert b"acct-" not in text

    async with http.post(relay.url + "/admin/channels/nope/test", headers=admin) as r:
        assert r.status == 404
        err = (await r.json())["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "channel_not_found"
    async with http.get(relay.url + "/admin/health") as r:
        assert r.status == 401
    async with http.get(relay.url + "/admin/openapi.json", headers=admin) as r:
        paths = (await r.json())["paths"]
    assert "/admin/health" in paths and "post" in paths["/admin/channels/{name}/test"]
