"""The access log: a line per request, relayed or refused, with no body, no whole key, no query string."""

from __future__ import annotations

import logging

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import CLIENT_KEY, RelayFactory

PROMPT = "access-log-canary-prompt"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "relay.access"]


async def test_one_text_line_per_request(relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture) -> None:
    relay = await relay_factory()  # the tests' log_level is warning: the access log has its own switch
    caplog.set_level(logging.INFO, logger="relay.access")
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0)
    async with client:
        await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": PROMPT}])
        stream = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": PROMPT}], stream=True)
        async for _ in stream:
            pass
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": PROMPT}])
    async with aiohttp.ClientSession() as http, http.get(relay.v1 + "/models?key=sk-secret-in-query") as resp:
        assert resp.status == 401
    got = lines(caplog)
    assert len(got) == 4, got
    ok, streamed, missing, unauth = got
    assert " POST /v1/chat/completions model=demo status=200 end=ok " in ok and CLIENT_KEY[:7] in ok
    assert "ttft_ms=-" in ok and "ttft_ms=-" not in streamed and "status=200" in streamed
    assert "status=404 end=rejected" in missing and CLIENT_KEY[:7] in missing
    assert " GET /v1/models " in unauth and "status=401" in unauth
    text = "\n".join(got)
    assert PROMPT not in text and CLIENT_KEY not in text and "sk-secret-in-query" not in text
    assert "127.0.0.1" in ok


async def test_json_lines_and_off(relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.access")
    body = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}]}
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    for fmt in ("json", "off"):
        relay = await relay_factory(access_log=fmt)
        async with aiohttp.ClientSession() as http, http.post(relay.v1 + "/chat/completions", json=body,
                                                               headers=auth) as resp:
            assert resp.status == 200
            rid = resp.headers["x-request-id"]
        found = [orjson.loads(line) for line in lines(caplog) if rid in line]
        if fmt == "off":
            assert found == []
            continue
        (entry,) = found
        assert entry["request_id"] == rid and entry["status"] == 200 and entry["model"] == "demo"
        assert entry["key"] == CLIENT_KEY[:7] and entry["end"] == "ok" and entry["latency_ms"] > 0
        assert set(entry) == {"ts", "request_id", "key", "client", "method", "path", "model", "status", "end",
                              "latency_ms", "ttft_ms"}
