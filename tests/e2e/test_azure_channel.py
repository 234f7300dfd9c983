"""End-to-end tests of an `azure` channel: the official openai SDK talks to the relay, which talks to a fake
Azure OpenAI resource.

The fake resource is a thin aiohttp app in front of the fake OpenAI upstream: it serves
/openai/deployments/{deployment}/{endpoint}, refuses a missing or unknown api-version (404) and a wrong
api-key (401) as Azure does, records what it saw, and hands the request to the fake OpenAI upstream's own
handler, so the wire format is OpenAI's byte for byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from tests.conftest import CLIENT_KEY, Relay, RelayFactory, Upstream, wait_ledger

MSGS = [{"role": "user", "content": "What is the weather like in Paris today?"}]
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
API_VERSION = "2024-10-21"
API_VERSIONS = frozenset({"2024-06-01", "2024-10-21", "2025-01-01-preview"})
DEPLOYMENTS = {"gpt-4o": "my-gpt4o-deployment", "text-embedding-3-small": "my-embedding-deployment"}
CONTENT_FILTER = {"error": {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
               "Please modify your prompt and retry.",
    "type": None, "param": "prompt", "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
        "hate": {"filtered": True, "severity": "high"}, "self_harm": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}},
}}


# ---- the fake Azure OpenAI resource ------------------------------------------------------------------------


@dataclass(slots=True)
class Seen:
    deployment: str
    endpoint: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    status: int = 0
    body: bytes | None = None  # a non-streamed answer's bytes


@dataclass
class FakeAzure:
    keys: set[str] = field(default_factory=lambda: {"azk-1", "azk-2"})
    seen: list[Seen] = field(default_factory=list)
    refuse: list[dict[str, Any]] = field(default_factory=list)  # the next requests get these as 400s
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")


def _azure_error(status: int, code: str, message: str) -> web.Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json")


def build_fake_azure(fake_openai: web.Application, state: FakeAzure) -> web.Application:
    async def deployment(request: web.Request) -> web.StreamResponse:
        seen = Seen(request.match_info["deployment"], request.match_info["endpoint"], dict(request.query),
                    CIMultiDict(request.headers))
        state.seen.append(seen)
        if request.query.get("api-version") not in API_VERSIONS:
            seen.status = 404
            return _azure_error(404, "404", "Resource not found")
        if request.headers.get("api-key") not in state.keys:
            seen.status = 401
            return _azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. "
                                            "Make sure to provide a valid key for an active subscription and use a "
                                            "correct regional API endpoint for your resource.")
        if state.refuse:
            seen.status = 400
            return web.Response(status=400, body=orjson.dumps(state.refuse.pop(0)), content_type="application/json")
        # the fake OpenAI upstream's handler answers, seeing the api-key as its bearer key
        headers = CIMultiDict(request.headers)
        headers["Authorization"] = "Bearer " + headers.pop("api-key")
        inner = request.clone(rel_url="/v1/" + seen.endpoint, headers=headers)
        match = await fake_openai.router.resolve(inner)
        resp = await match.handler(inner)
        seen.status = resp.status
        if isinstance(resp, web.Response) and isinstance(resp.body, bytes):
            seen.body = resp.body
        return resp

    app = web.Application()
    app.router.add_post("/openai/deployments/{deployment}/{endpoint:.+}", deployment)
    return app


@pytest.fixture
async def azure(aiohttp_server: Callable[..., Awaitable[TestServer]], upstream: Upstream) -> FakeAzure:
    state = FakeAzure()
    state.server = await aiohttp_server(build_fake_azure(upstream.app, state))
    return state


def azure_channel(base_url: str, **overrides: Any) -> dict[str, Any]:
    return {"name": "az", "type": "azure", "base_url": base_url, "keys": ["azk-1"],
            "models": ["gpt-4o", "text-embedding-3-small"], "model_map": DEPLOYMENTS, "api_version": API_VERSION,
            **overrides}


PRICES = {"gpt-4o": {"input": 2.5, "output": 10}, "text-embedding-3-small": {"input": 0.02}}


@pytest.fixture
async def relay(relay_factory: RelayFactory, azure: FakeAzure) -> Relay:
    return await relay_factory(channels=[azure_channel(azure.url)], prices=PRICES)


@pytest.fixture
async def client(relay: Relay) -> Any:
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


def _assert_azure_request(seen: Seen, deployment: str, endpoint: str, key: str = "azk-1") -> None:
    assert (seen.deployment, seen.endpoint) == (deployment, endpoint)
    assert seen.query == {"api-version": API_VERSION}
    assert seen.headers["api-key"] == key
    assert "Authorization" not in seen.headers
    assert not any(CLIENT_KEY in v for v in seen.headers.values())


def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-200:]
    return [e for e in raw.split(b"\n\n") if e]


# ---- chat ---------------------------------------------------------------------------------------------------


async def test_chat_non_stream_is_the_deployments_bytes(client, relay, azure, upstream):
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS, temperature=0.2)
    result = raw.parse()
    assert result.choices[0].message.content and result.usage is not None
    [seen] = azure.seen
    _assert_azure_request(seen, "my-gpt4o-deployment", "chat/completions")
    assert seen.status == 200 and seen.body is not None
    assert raw.http_response.content == seen.body  # the resource's answer, byte for byte
    [rec] = upstream.records
    assert orjson.loads(rec.body) == {"model": "gpt-4o", "messages": MSGS, "temperature": 0.2}  # as the SDK sent it

    [row] = await wait_ledger(relay.database, 1)
    assert (row["channel"], row["model"], row["status"], row["usage_source"]) == ("az", "gpt-4o", 200, "upstream")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (result.usage.prompt_tokens,
                                                                result.usage.completion_tokens)
    expected = (result.usage.prompt_tokens * 2.5 + result.usage.completion_tokens * 10) / 1e6
    assert row["cost_usd"] == pytest.approx(expected)


async def test_chat_stream_hides_the_usage_chunk_it_asked_for(client, relay, azure, upstream):
    stream = await client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    [seen] = azure.seen
    _assert_azure_request(seen, "my-gpt4o-deployment", "chat/completions")
    sent = upstream.records[-1].json()
    assert sent["stream_options"] == {"include_usage": True} and sent["model"] == "gpt-4o"
    [row] = await wait_ledger(relay.database, 1)
    assert (row["channel"], row["stream"], row["usage_source"]) == ("az", 1, "upstream")
    assert row["completion_tokens"] > 0


async def test_chat_stream_with_usage_is_the_deployments_bytes(relay, azure, upstream, http):
    body = (b'{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},\n'
            b' "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}]}')
    async with http.post(relay.v1 + "/chat/completions", data=body, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        relay_raw = await resp.read()
    [rec] = upstream.records
    assert rec.body == body  # the client asked for usage itself: not one byte changed
    _assert_azure_request(azure.seen[0], "my-gpt4o-deployment", "chat/completions")
    # the same request straight to the resource gives the same events (ids and timestamps aside)
    url = f"{azure.url}/openai/deployments/my-gpt4o-deployment/chat/completions?api-version={API_VERSION}"
    async with http.post(url, data=body, headers={"api-key": "azk-2", "Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        direct_raw = await resp.read()
    ours, theirs = _events(relay_raw), _events(direct_raw)
    assert len(ours) == len(theirs) > 3

    def strip(event: bytes) -> Any:
        if event == b"data: [DONE]":
            return event
        return {k: v for k, v in orjson.loads(event[6:]).items() if k not in ("id", "created")}

    assert [strip(e) for e in ours] == [strip(e) for e in theirs]
    last = orjson.loads(ours[-2][6:])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0


# ---- embeddings ---------------------------------------------------------------------------------------------


async def test_embeddings_go_to_their_deployment(client, relay, azure, upstream):
    raw = await client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                           input=["hello", "world"])
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    [seen] = azure.seen
    _assert_azure_request(seen, "my-embedding-deployment", "embeddings")
    assert raw.http_response.content == seen.body
    assert upstream.records[-1].json()["input"] == ["hello", "world"]
    [row] = await wait_ledger(relay.database, 1)
    assert (row["endpoint"], row["usage_source"]) == ("embeddings", "upstream") and row["prompt_tokens"] > 0


# ---- errors -------------------------------------------------------------------------------------------------


async def test_content_filter_refusal_is_passed_back_without_failover(relay_factory, azure, http):
    relay = await relay_factory(channels=[azure_channel(azure.url, keys=["azk-1", "azk-2"])], prices=PRICES)
    azure.refuse.append(CONTENT_FILTER)
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert info.value.status_code == 400 and info.value.code == "content_filter"
        assert orjson.loads(info.value.response.content) == CONTENT_FILTER  # as Azure sent it
        assert len(azure.seen) == 1  # a refused prompt is refused by every account: no second try
        # and the account stays in rotation
        assert (await client.chat.completions.create(model="gpt-4o", messages=MSGS)).choices
        assert (await client.chat.completions.create(model="gpt-4o", messages=MSGS)).choices
    assert [s.headers["api-key"] for s in azure.seen] == ["azk-1", "azk-2", "azk-1"]
    rows = await wait_ledger(relay.database, 3)
    assert rows[0]["status"] == 400 and rows[0]["cost_usd"] == 0


async def test_a_refused_key_fails_over_to_the_next_account(relay_factory, azure):
    relay = await relay_factory(channels=[azure_channel(azure.url, keys=["azk-revoked", "azk-2"])], prices=PRICES)
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as client:
        assert (await client.chat.completions.create(model="gpt-4o", messages=MSGS)).choices
    assert [(s.headers["api-key"], s.status) for s in azure.seen] == [("azk-revoked", 401), ("azk-2", 200)]


async def test_channel_api_version_reaches_the_resource(relay_factory, azure):
    relay = await relay_factory(channels=[azure_channel(azure.url, api_version="2025-01-01-preview")], prices=PRICES)
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as client:
        assert (await client.chat.completions.create(model="gpt-4o", messages=MSGS)).choices
    assert azure.seen[0].query == {"api-version": "2025-01-01-preview"}


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}}]


async def test_tools_round_trip_streamed_tools_and_json_schema(client, relay, azure, upstream):
    msgs = [{"role": "system", "content": "You are terse."}, *MSGS]
    first = await client.chat.completions.create(model="gpt-4o", messages=msgs, tools=TOOLS)
    [call] = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments)["location"]
    follow = [*msgs, first.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    second = await client.chat.completions.create(model="gpt-4o", messages=follow)
    assert second.choices[0].message.content
    sent = orjson.loads(upstream.records[-1].body)
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["messages"][-1]["role"] == "tool" and sent["messages"][-1]["tool_call_id"] == call.id

    stream = await client.chat.completions.create(model="gpt-4o", messages=msgs, tools=TOOLS, stream=True)
    parts: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                parts[tc.index] = parts.get(tc.index, "") + (tc.function.arguments or "")
    assert parts and all(isinstance(orjson.loads(a), dict) for a in parts.values())

    schema = {"name": "weather", "schema": {"type": "object", "properties": {"c": {"type": "number"}},
                                            "required": ["c"], "additionalProperties": False}, "strict": True}
    answer = await client.chat.completions.create(
        model="gpt-4o", messages=MSGS, response_format={"type": "json_schema", "json_schema": schema}
    )
    assert isinstance(orjson.loads(answer.choices[0].message.content), dict)
    assert orjson.loads(upstream.records[-1].body)["response_format"]["json_schema"] == schema
    for seen in azure.seen:
        _assert_azure_request(seen, "my-gpt4o-deployment", "chat/completions")
