"""Refused credentials are counted in /metrics by reason and logged, a flood in one line."""

from __future__ import annotations

import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLIENT_KEY, RelayFactory
from tests.e2e.test_admin import ADMIN_TOKEN, create

BODY = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


async def failures(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    return {
        s.labels["reason"]: s.value
        for fam in text_string_to_metric_families(text) if fam.name == "relay_auth_failures"
        for s in fam.samples if s.name == "relay_auth_failures_total"
    }


async def test_auth_failures_are_counted_by_reason_and_logged_quietly(relay_factory: RelayFactory, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="relay.auth")
    relay = await relay_factory(admin_token=ADMIN_TOKEN)
    bad = "sk-wrong-" + "9" * 40
    async with aiohttp.ClientSession() as http:
        k = await create(http, relay, ip_allow=["10.0.0.0/8"])
        for headers, n in (({}, 2), ({"Authorization": f"Bearer {bad}"}, 5), ({"Authorization": f"Bearer {k['key']}"}, 1)):
            for _ in range(n):
                async with http.post(relay.v1 + "/chat/completions", json=BODY, headers=headers) as resp:
                    assert resp.status in (401, 403)
        async with http.get(relay.url + "/admin/keys", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        async with http.post(relay.v1 + "/chat/completions", json=BODY,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as resp:
            assert resp.status == 200  # a good key is not counted
        got = await failures(http, relay.url)
    assert got == {"missing_api_key": 2, "invalid_api_key": 5, "ip_not_allowed": 1, "admin": 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.auth"]
    assert len(lines) == 1 and "refused POST /v1/chat/completions" in lines[0]
    assert bad not in caplog.text and k["key"] not in caplog.text


async def test_metrics_token_guards_metrics(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(metrics_token="m" * 32)
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get(relay.url + "/metrics", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "invalid_metrics_token"
        async with http.get(relay.url + "/metrics", headers={"Authorization": "Bearer " + "m" * 32}) as resp:
            assert resp.status == 200
            text = await resp.text()
    assert 'relay_auth_failures_total{reason="invalid_metrics_token"} 2.0' in text
    async with aiohttp.ClientSession() as http, http.get(relay.url + "/healthz") as resp:
        assert resp.status == 200  # the other operations pages stay open
