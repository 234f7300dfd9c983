"""/v1/responses end to end with the official openai SDK: passthrough to an openai channel of three accounts
(the fake upstream speaks the Responses API and keeps each response on the account that made it), calls
on a stored response pinned to that account, another key's ids unknown, and translation onto chat for a
`responses: false` openai channel, an anthropic channel and a gemini channel. Usage and cost land in the
ledger on every path."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from bench.fake_responses import RESPONSES
from bench.fake_upstream import truncate_after
from tests.conftest import ACCOUNTS, CLIENT_KEY, Relay, Upstream, wait_ledger
from tests.fakes import anthropic_upstream as claude_fake
from tests.fakes import gemini_upstream as gemini_fake

OTHER_KEY = "sk-test-" + "9f8e7d6c" * 6
PRICES = {
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
    "compat-chat": {"input": 1, "output": 2}, "claude-sonnet-4-5": {"input": 3, "output": 15},
    "gemini-2.5-flash": {"input": 0.3, "output": 2.5},
}
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}}
CITY = {"format": {"type": "json_schema", "name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"], "additionalProperties": False}}}
# What Codex CLI sends on a turn after a tool ran: nothing stored, reasoning carried back encrypted.
CODEX: dict[str, Any] = {
    "instructions": "You are a coding agent.", "store": False, "stream": True,
    "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "medium", "summary": "auto"},
    "tools": [{"type": "function", "name": "shell", "description": "Run a command", "strict": False,
               "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                              "required": ["command"]}}],
    "tool_choice": "auto", "parallel_tool_calls": False, "prompt_cache_key": "codex-session-1",
    "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-opaque"},
        {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"command": ["ls"]}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "README.md\nrelay\n"},
    ],
}
CODEX_ARGS = {k: v for k, v in CODEX.items() if k != "stream"}  # responses.stream() sets stream itself


@pytest.fixture
async def relay(relay_factory: Any) -> Relay:
    return await relay_factory(  # type: ignore[no-any-return]
        client_keys=[{"name": "test", "key": CLIENT_KEY}, {"name": "other", "key": OTHER_KEY}],
    )


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


def reached(upstream: Upstream, path: str = "/v1/responses", since: int = 0) -> list[str | None]:
    return [r.key for r in upstream.records[since:] if r.path.startswith(path)]


# -- passthrough ---------------------------------------------------------------------------------------


async def test_a_response_passes_through_byte_for_byte(relay: Relay, upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(relay.v1 + "/responses", json={"model": "gpt-4o-mini", "input": "Hello"},
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as resp:
            assert resp.status == 200
            raw = await resp.read()
    rid = orjson.loads(raw)["id"]
    [key] = reached(upstream)
    assert key in ACCOUNTS
    assert raw == orjson.dumps(upstream.app[RESPONSES].get(key, rid))  # the upstream's own bytes


async def test_a_stream_passes_through_byte_for_byte(relay: Relay, upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(relay.v1 + "/responses", json={"model": "gpt-4o-mini", "input": "Hello", "stream": True},
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            streamed = await resp.read()
        rid = orjson.loads(streamed.split(b"data: ", 1)[1].split(b"\n", 1)[0])["response"]["id"]
        [key] = reached(upstream)
        # the fake replays a stored response's stream exactly as it first sent it
        async with http.get(f"{upstream.url}/responses/{rid}?stream=true",
                            headers={"Authorization": f"Bearer {key}"}) as replay:
            assert await replay.read() == streamed
    assert b"[DONE]" not in streamed and b"event: response.completed" in streamed


async def test_the_sdk_creates_streams_retrieves_lists_deletes_and_cancels(
    relay: Relay, upstream: Upstream, client: openai.AsyncOpenAI,
) -> None:
    made = await client.responses.create(model="gpt-4o-mini", input="Hello", instructions="Be brief.")
    assert made.output_text and made.status == "completed"
    async with client.responses.stream(model="gpt-4o-mini", input="Stream please") as stream:
        texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(texts) == final.output_text

    got = await client.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text
    items = await client.responses.input_items.list(made.id)
    assert [i.type for i in items.data] == ["message"]
    bg = await client.responses.create(model="gpt-4o-mini", input="Later", background=True)
    assert (await client.responses.cancel(bg.id)).status == "cancelled"
    await client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(made.id)

    # every call on a stored response reached the account that made it
    calls = [r for r in upstream.records if r.path.startswith("/v1/responses/")]
    made_on = {r.key for r in upstream.records if r.path == "/v1/responses"}
    assert calls and all(r.key in made_on for r in calls)
    rows = await wait_ledger(relay.database, 8)
    stored_calls = [r for r in rows if r["endpoint"].startswith("responses/")]
    assert len(stored_calls) == 5 and all(r["cost_usd"] == 0 for r in stored_calls)


async def test_follow_ups_stay_on_the_creating_account_while_other_traffic_rotates(
    upstream: Upstream, client: openai.AsyncOpenAI,
) -> None:
    prev = await client.responses.create(model="gpt-4o-mini", input="Start")
    home = reached(upstream)[-1]
    others: list[str | None] = []
    for i in range(30):
        before = len(upstream.records)
        prev = await client.responses.create(model="gpt-4o-mini", input=f"Step {i}", previous_response_id=prev.id)
        assert (await client.responses.retrieve(prev.id)).id == prev.id
        assert set(reached(upstream, since=before)) == {home}
        before = len(upstream.records)
        await client.responses.create(model="gpt-4o-mini", input="Unrelated")  # plain traffic rotates
        others += reached(upstream, since=before)
    assert set(others) == set(ACCOUNTS)
    assert prev.usage is not None and prev.usage.input_tokens_details.cached_tokens > 0  # the chain was cached


async def test_another_keys_response_is_not_found(relay: Relay, client: openai.AsyncOpenAI) -> None:
    mine = await client.responses.create(model="gpt-4o-mini", input="Mine")
    async with openai.AsyncOpenAI(base_url=relay.v1, api_key=OTHER_KEY, max_retries=0, timeout=10) as other:
        for call in (
            lambda: other.responses.retrieve(mine.id),
            lambda: other.responses.delete(mine.id),
            lambda: other.responses.input_items.list(mine.id),
            lambda: other.responses.create(model="gpt-4o-mini", input="x", previous_response_id=mine.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call()
    assert (await client.responses.retrieve(mine.id)).id == mine.id  # still there for its own key


async def test_usage_and_cost_reach_the_ledger(relay: Relay, client: openai.AsyncOpenAI) -> None:
    r = await client.responses.create(model="gpt-4o-mini", input="Count me")
    async with client.responses.stream(model="gpt-4o-mini", input="Count me too") as s:
        f = await s.get_final_response()
    rows = await wait_ledger(relay.database, 2)
    for row, resp in zip(rows, (r, f)):
        assert resp.usage is not None
        assert row["endpoint"] == "responses" and row["usage_source"] == "upstream"
        assert (row["prompt_tokens"], row["completion_tokens"]) == (resp.usage.input_tokens, resp.usage.output_tokens)
        cached = resp.usage.input_tokens_details.cached_tokens
        want = ((resp.usage.input_tokens - cached) * 0.15 + cached * 0.075 + resp.usage.output_tokens * 0.6) / 1e6
        assert row["cost_usd"] == pytest.approx(want, rel=1e-9)


async def test_a_codex_turn_passes_through(upstream: Upstream, client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(model="gpt-4o-mini", **CODEX_ARGS) as s:  # type: ignore[arg-type]
        final = await s.get_final_response()
    assert final.output_text
    assert orjson.loads(upstream.records[-1].body)["input"] == CODEX["input"]  # untouched


# -- translated onto chat ------------------------------------------------------------------------------


class Translated:
    """A relay whose models are served by channels without a Responses API."""

    def __init__(self, relay: Relay, upstream: Upstream, claude: TestServer, gemini: TestServer) -> None:
        self.relay, self.upstream, self.claude, self.gemini = relay, upstream, claude, gemini


@pytest.fixture
async def translated(
    relay_factory: Any, upstream: Upstream, aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> Translated:
    claude = await aiohttp_server(claude_fake.build_app(claude_fake.FakeOptions()))
    gemini = await aiohttp_server(gemini_fake.build_app(("gk-1",)))
    relay = await relay_factory(
        channels=[
            {"name": "compat", "type": "openai", "base_url": upstream.url, "keys": ["acct-0"],
             "models": ["compat-chat"], "responses": False},
            {"name": "claude", "type": "anthropic", "base_url": str(claude.make_url("")).rstrip("/"),
             "keys": ["ak-1"], "models": ["claude-sonnet-4-5"]},
            {"name": "gem", "type": "gemini", "base_url": str(gemini.make_url("")).rstrip("/"),
             "keys": ["gk-1"], "models": ["gemini-2.5-flash"]},
        ],
        prices=PRICES,
    )
    return Translated(relay, upstream, claude, gemini)


TRANSLATED_MODELS = ["compat-chat", "claude-sonnet-4-5", "gemini-2.5-flash"]


@pytest.mark.parametrize("model", TRANSLATED_MODELS)
async def test_translated_text_stream_and_ledger(translated: Translated, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=translated.relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        whole = await c.responses.create(model=model, input="Hello", instructions="Be brief.", max_output_tokens=300)
        assert whole.output_text and whole.status == "completed" and whole.id.startswith("resp_")
        async with c.responses.stream(model=model, input="Hello again") as s:
            deltas = [e.delta async for e in s if e.type == "response.output_text.delta"]
            final = await s.get_final_response()
        assert deltas and "".join(deltas) == final.output_text
        with pytest.raises(openai.NotFoundError):  # the upstream keeps nothing: there is nothing to retrieve
            await c.responses.retrieve(whole.id)
    rows = [r for r in await wait_ledger(translated.relay.database, 3) if r["endpoint"] == "responses"]
    assert len(rows) == 2
    for row, resp in zip(rows, (whole, final)):
        assert resp.usage is not None and row["usage_source"] == "upstream"
        assert (row["prompt_tokens"], row["completion_tokens"]) == (resp.usage.input_tokens, resp.usage.output_tokens)
        price = PRICES[model]
        assert row["cost_usd"] == pytest.approx(
            (resp.usage.input_tokens * price["input"] + resp.usage.output_tokens * price["output"]) / 1e6, rel=1e-6
        )


@pytest.mark.parametrize("model", TRANSLATED_MODELS)
async def test_translated_function_call_round_trip(translated: Translated, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=translated.relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        first = await c.responses.create(
            model=model, input="Weather in Paris?", tools=[WEATHER], store=False,  # type: ignore[list-item]
        )
        [call] = [o for o in first.output if o.type == "function_call"]
        assert call.name == "get_weather" and isinstance(orjson.loads(call.arguments), dict)
        second = await c.responses.create(
            model=model, tools=[WEATHER], store=False,  # type: ignore[list-item]
            input=[{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),  # type: ignore[list-item]
                   {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}],
        )
        assert second.output_text


@pytest.mark.parametrize("model", TRANSLATED_MODELS)
async def test_translated_json_schema(translated: Translated, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=translated.relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        r = await c.responses.create(model=model, input="A French city", text=CITY)  # type: ignore[arg-type]
    assert isinstance(orjson.loads(r.output_text), dict)


@pytest.mark.parametrize("model", TRANSLATED_MODELS)
async def test_a_codex_turn_is_translated(translated: Translated, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=translated.relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        async with c.responses.stream(model=model, **CODEX_ARGS) as s:  # type: ignore[arg-type]
            final = await s.get_final_response()
    assert final.output_text or any(o.type == "function_call" for o in final.output)


async def test_state_on_a_translated_channel_gets_a_clear_400(translated: Translated) -> None:
    async with openai.AsyncOpenAI(base_url=translated.relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        with pytest.raises(openai.BadRequestError) as e:
            await c.responses.create(model="claude-sonnet-4-5", input="Remember this", store=True)
    assert "input" in e.value.message and e.value.param == "store"


async def test_a_cut_translated_stream_raises_in_the_sdk(translated: Translated) -> None:
    translated.upstream.script["acct-0"] = [truncate_after(2)]
    async with openai.AsyncOpenAI(base_url=translated.relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        stream = await c.responses.create(model="compat-chat", input="Hello", stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    rows = await wait_ledger(translated.relay.database, 1)
    assert rows[-1]["end_reason"] == "upstream_error"


async def test_models_served_only_by_translation_list_the_responses_endpoint(translated: Translated) -> None:
    async with openai.AsyncOpenAI(base_url=translated.relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        models = {m.id: m.model_dump() for m in (await c.models.list()).data}
    assert Counter("openai-response" in m["supported_endpoint_types"] for m in models.values()) == {True: 3}
    assert {m: models[m]["owned_by"] for m in TRANSLATED_MODELS} == {
        "compat-chat": "openai", "claude-sonnet-4-5": "anthropic", "gemini-2.5-flash": "google"}
