"""/status and /status.json through real HTTP: real traffic and probes counted as the README says, the
answer valid against the JSON Schema printed in the README, no channel or account on the page by default."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonschema
import openai
import orjson
import pytest

from bench.fake_upstream import status
from relay.app import AVAILABILITY
from tests.conftest import ACCOUNTS, CLIENT_KEY, MODELS, ROOT, Relay, RelayFactory, Upstream

FAST = {"status": {"bucket": 1}, "retry": {"attempts": 1, "failure_threshold": 100}}


def readme_schema() -> dict[str, Any]:
    """The JSON Schema of /status.json as the README documents it."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- status\.json schema -->\s*```json\n(.*?)\n```", text, re.S)
    assert m, "README has no /status.json schema block"
    schema: dict[str, Any] = orjson.loads(m.group(1))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@dataclass(frozen=True, slots=True)
class ProbeResult:  # the shape the health prober reports
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


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def status_json(http: aiohttp.ClientSession, relay: Relay) -> dict[str, Any]:
    async with http.get(relay.url + "/status.json") as resp:  # no key
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Cache-Control"].startswith("public")
        assert resp.headers["Access-Control-Allow-Origin"] == "*"  # readable by a status widget elsewhere
        doc: dict[str, Any] = await resp.json()
    return doc


def totals(doc: dict[str, Any], model: str) -> tuple[int, int]:
    m = next(m for m in doc["models"] if m["name"] == model)
    return sum(b["ok"] for b in m["bars"]), sum(b["failed"] for b in m["bars"])


async def until(http: aiohttp.ClientSession, relay: Relay, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll /status.json (flushed every half bucket, cached for a bucket) until `ok`, for at most 10 s."""
    deadline = time.monotonic() + 10
    while not ok(doc := await status_json(http, relay)):
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.2)
    return doc


async def ask(client: openai.AsyncOpenAI, model: str = "demo") -> Exception | None:
    try:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIError as e:
        return e
    return None


async def test_traffic_and_probes_are_counted_and_the_answer_matches_the_readme_schema(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession,
) -> None:
    relay = await relay_factory(**FAST)
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    async with client:
        for _ in range(3):
            assert await ask(client) is None
        upstream.script["acct-0"] = [status(500)]  # the upstream fails: 502
        upstream.script["acct-1"] = [status(500)]
        upstream.script["acct-2"] = [status(500)]
        assert isinstance(await ask(client), openai.InternalServerError)
        for acc in ACCOUNTS:  # every account rate limited by the upstream: 429, counted as failed
            upstream.script[acc] = [status(429, retry_after=1)]
        assert isinstance(await ask(client), openai.RateLimitError)
        assert isinstance(await ask(client, "no-such-model"), openai.NotFoundError)  # the client's error
        async with http.post(relay.v1 + "/chat/completions", data=b"{not json",
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as resp:
            assert resp.status == 400  # neither
    relay.app[AVAILABILITY].observe_probe(ProbeResult("fake", 2, "u", "demo", True, "ok", 200, 12.0, "", time.time()))

    doc = await until(http, relay, lambda d: totals(d, "demo") == (4, 2))
    jsonschema.validate(doc, readme_schema(), cls=jsonschema.Draft202012Validator)
    assert [m["name"] for m in doc["models"]] == sorted(MODELS)  # one row per public model
    assert "no-such-model" not in orjson.dumps(doc).decode()
    demo = next(m for m in doc["models"] if m["name"] == "demo")
    assert demo["uptime"]["24h"] == pytest.approx(4 / 6) and demo["latency_ms"] is not None
    assert "channels" not in doc and "channels" not in demo

    async with http.get(relay.url + "/status") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    for secret in ("fake", "acct-", "account 0", "account 1", "account 2", CLIENT_KEY, upstream.url):
        assert secret not in page and secret not in orjson.dumps(doc).decode(), secret
    assert "https://" not in page and "http://" not in page  # nothing fetched from elsewhere


async def test_show_channels_adds_channel_rows_and_accounts_out_of_rotation(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession,
) -> None:
    relay = await relay_factory(**{**FAST, "status": {"bucket": 1, "show_channels": True, "title": "Our models",
                                                     "note": "Incidents: see the news page"}})
    upstream.script["acct-1"] = [status(401)]  # refuses its key: out of rotation
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    async with client:
        for _ in range(4):
            await ask(client)
    doc = await until(http, relay, lambda d: sum(b["ok"] + b["failed"] for b in d["channels"][0]["bars"]) == 4)
    jsonschema.validate(doc, readme_schema(), cls=jsonschema.Draft202012Validator)
    assert doc["title"] == "Our models" and doc["note"] == "Incidents: see the news page"
    (fake,) = doc["channels"]
    assert fake["name"] == "fake" and fake["accounts_out"] == [{"index": 1, "state": "disabled"}]
    assert next(m for m in doc["models"] if m["name"] == "demo")["channels"] == ["fake"]
    async with http.get(relay.url + "/status") as resp:
        page = await resp.text()
    assert "<title>Our models</title>" in page and "Incidents: see the news page" in page
    assert "fake" in page and "account 1: disabled" in page
    assert "acct-" not in page and CLIENT_KEY not in page and upstream.url not in page


async def test_health_probes_alone_fill_the_status_figures(
    relay_factory: RelayFactory, upstream: Upstream, http: aiohttp.ClientSession,
) -> None:
    upstream.script["acct-1"] = [status(500)] * 1000  # one account fails its probes; no client traffic at all
    relay = await relay_factory(**{**FAST, "health": {"enabled": True, "interval": 0.3}})
    doc = await until(http, relay, lambda d: totals(d, "demo")[0] >= 2 and totals(d, "demo")[1] >= 1)
    assert not [r for r in upstream.records if r.key is None]
    assert all(r.path.endswith("/chat/completions") for r in upstream.records)  # only probes were sent
    demo = next(m for m in doc["models"] if m["name"] == "demo")
    assert 0 < demo["uptime"]["24h"] < 1
