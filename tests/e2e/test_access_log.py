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


async def test_relay_serve_writes_every_line_before_it_stops(tmp_path) -> None:
    """`relay serve` as run in production (its own log handler, lines gathered and written together): every
    request's line is in the log within a moment, and the lines of the last requests before SIGTERM too."""
    import asyncio
    import signal

    import yaml

    from tests.procs import Processes

    procs = Processes(tmp_path)
    try:
        upstream = await procs.fake_upstream()
        config = tmp_path / "relay.yaml"
        config.write_text(yaml.safe_dump({
            "database": str(tmp_path / "relay.db"),
            "client_keys": [{"name": "t", "key": CLIENT_KEY}],
            "channels": [{"name": "f", "type": "openai", "base_url": upstream, "keys": ["a"], "models": ["demo"]}],
            "prices": {"demo": {"input": 1, "output": 1}},
            "log_level": "warning",
        }))
        proc, url = await procs.relay(config)
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        body = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}]}
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(url + "/v1/chat/completions", json=body, headers=auth) as resp:
                    assert resp.status == 200
            await asyncio.sleep(0.3)
            assert procs.log().count("POST /v1/chat/completions model=demo status=200") == 3, procs.log()
            for _ in range(2):
                async with http.post(url + "/v1/chat/completions", json=body, headers=auth) as resp:
                    assert resp.status == 200
        proc.send_signal(signal.SIGTERM)  # at once: the last two lines are still gathered
        assert await asyncio.to_thread(proc.wait, 30) == 0
        log = procs.log()
        assert log.count("POST /v1/chat/completions model=demo status=200") == 5 and PROMPT not in log, log
    finally:
        procs.stop_all()
