"""The fake upstream's Responses API, driven with the official openai SDK: wire format, streams,
per-account state (a follow-up reaches only the account that made the response) and scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from bench.fake_responses import RESPONSES
from bench.fake_upstream import RECORDS, SCRIPT, FakeOptions, build_app, status, truncate_after
from tests.procs import Processes

SENTENCE = "Hello! This is the demo model."
QUESTION = "What is the weather like in Paris today?"
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather by city",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                         "required": ["location"], "additionalProperties": False}}]
EVENT = TypeAdapter(ResponseStreamEvent)
ITEM = TypeAdapter(ResponseItem)
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"] + ["response.output_text.delta"] * 5 + [
               "response.output_text.done", "response.content_part.done",
               "response.output_item.done", "response.completed"]


@pytest.fixture
async def server(aiohttp_server):
    return await aiohttp_server(build_app(FakeOptions(chunks=5)))


def sdk(server, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)


@pytest.fixture
async def a(server):
    async with sdk(server, "acct-a") as c:
        yield c


@pytest.fixture
async def b(server):
    async with sdk(server, "acct-b") as c:
        yield c


async def raw_events(server, body: dict[str, Any], key: str = "acct-a",
                     path: str = "/v1/responses") -> list[dict[str, Any]]:
    """POST a streamed request; every event checked against its `event:` line and the SDK's types."""
    async with aiohttp.ClientSession() as http:
        async with http.post(server.make_url(path), json=body,
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            return parse_sse(await resp.read())


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    assert b"[DONE]" not in raw and raw.endswith(b"\n\n")
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        event = orjson.loads(data[6:])
        assert name[7:].decode() == event["type"]
        EVENT.validate_python(event)
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(out[0]["sequence_number"],
                                                             out[0]["sequence_number"] + len(out)))
    return out


async def test_create_text_echoes_and_counts(a, server):
    raw = await a.responses.with_raw_response.create(
        model="gpt-4o-mini", input=QUESTION, instructions="Be brief.", temperature=0.5,
        metadata={"team": "x"})
    body = orjson.loads(raw.content)
    Response.model_validate(body)
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == SENTENCE and r.model == "gpt-4o-mini"
    assert body["output"][0]["role"] == "assistant" and body["output"][0]["id"].startswith("msg_")
    assert (r.instructions, r.temperature, r.metadata) == ("Be brief.", 0.5, {"team": "x"})
    assert body["store"] is True and r.previous_response_id is None and r.tools == []
    assert r.text.format.type == "text" and r.tool_choice == "auto" and r.truncation == "disabled"
    own = len(QUESTION) // 4 + 1 + len("Be brief.") // 4 + 1
    assert r.usage.input_tokens == own and r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens == 5 and r.usage.total_tokens == own + 5
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    rec = server.app[RECORDS][-1]
    assert rec.path == "/v1/responses" and rec.key == "acct-a" and rec.json()["input"] == QUESTION


async def test_tool_call_then_tool_output_gives_a_message(a):
    r = await a.responses.create(model="demo", input=QUESTION, tools=TOOLS)
    call = r.output[0]
    assert r.status == "completed" and call.type == "function_call"
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    assert orjson.loads(call.arguments) == {"location": "Paris"}
    assert r.tools[0].name == "get_weather" and r.tools[0].strict is True
    follow = await a.responses.create(model="demo", tools=TOOLS, input=[
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert follow.output[0].type == "message" and follow.output_text == SENTENCE
    forced = await a.responses.create(model="demo", tools=TOOLS, tool_choice="required",
                                      input=[{"type": "function_call_output",
                                              "call_id": call.call_id, "output": "sunny"}])
    assert forced.output[0].type == "function_call"
    none = await a.responses.create(model="demo", input=QUESTION, tools=TOOLS,
                                    tool_choice="none")
    assert none.output_text == SENTENCE


async def test_json_schema_output(a):
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "temp": {"type": "number"}},
              "required": ["city", "temp"], "additionalProperties": False}
    r = await a.responses.create(model="demo", input=QUESTION, text={"format": {
        "type": "json_schema", "name": "weather", "schema": schema, "strict": True}})
    assert orjson.loads(r.output_text) == {"city": "Paris", "temp": 1.5}
    assert r.text.format.type == "json_schema"


async def test_max_output_tokens_makes_it_incomplete(aiohttp_server):
    server = await aiohttp_server(build_app(FakeOptions(chunks=20)))
    async with sdk(server, "acct-a") as c:
        r = await c.responses.create(model="demo", input=QUESTION, max_output_tokens=16)
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
        assert r.usage.output_tokens == 16 and r.output[0].status == "incomplete"
        full = (await c.responses.create(model="demo", input=QUESTION)).output_text
        assert full.startswith(r.output_text) and len(r.output_text) < len(full)
        with pytest.raises(openai.BadRequestError) as ei:
            await c.responses.create(model="demo", input=QUESTION, max_output_tokens=5)
        assert ei.value.code == "integer_below_min_value" and ei.value.param == "max_output_tokens"
    events = await raw_events(server, {"model": "demo", "input": QUESTION, "stream": True,
                                       "max_output_tokens": 16})
    assert events[-1]["type"] == "response.incomplete"
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 16


async def test_stream_with_the_sdk_helper(a):
    async with a.responses.stream(model="demo", input=QUESTION) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds == TEXT_EVENTS
    assert final.output_text == SENTENCE and final.status == "completed"
    assert final.usage.output_tokens == 5
    assert (await a.responses.retrieve(final.id)).output_text == SENTENCE


async def test_stream_events_on_the_wire(server):
    events = await raw_events(server, {"model": "demo", "input": QUESTION, "stream": True},
                              path="/responses")
    assert [e["type"] for e in events] == TEXT_EVENTS and events[0]["sequence_number"] == 0
    created, done = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["id"] == done["id"] and done["status"] == "completed"
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(e["delta"] for e in deltas) == SENTENCE
    assert all(e["item_id"] == done["output"][0]["id"] and e["obfuscation"] for e in deltas)
    assert events[-2]["item"] == done["output"][0]


async def test_tool_call_stream(server):
    events = await raw_events(server, {"model": "demo", "input": QUESTION, "tools": TOOLS,
                                       "stream": True})
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    assert events[2]["item"]["arguments"] == "" and events[2]["item"]["status"] == "in_progress"
    args = "".join(e["delta"] for e in events if e["type"].endswith("arguments.delta"))
    assert orjson.loads(args) == {"location": "Paris"} and events[-3]["arguments"] == args


async def test_codex_shaped_request(server, a):
    body = {"model": "gpt-5-codex", "instructions": "You are a coding agent.", "store": False,
            "stream": True, "include": ["reasoning.encrypted_content"], "tools": TOOLS,
            "reasoning": {"effort": "medium", "summary": "auto"}, "tool_choice": "auto",
            "parallel_tool_calls": False, "prompt_cache_key": "conv-1", "input": [
                {"type": "message", "role": "developer",
                 "content": [{"type": "input_text", "text": "Use the tools."}]},
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": QUESTION}]},
                {"type": "reasoning", "id": "rs_prev", "summary": [],
                 "encrypted_content": "gAAAAABprevious"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                 "arguments": '{"location":"Paris"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}
    events = await raw_events(server, body)
    final = events[-1]["response"]
    Response.model_validate(final)
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning" and reasoning["encrypted_content"].startswith("gAAAA")
    assert reasoning["summary"][0]["type"] == "summary_text" and message["type"] == "message"
    assert events[2]["item"]["type"] == "reasoning" and "encrypted_content" not in events[2]["item"]
    summary = "".join(e["delta"] for e in events
                      if e["type"] == "response.reasoning_summary_text.delta")
    assert summary == reasoning["summary"][0]["text"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 5
    assert final["usage"]["output_tokens"] == 10 and final["store"] is False
    assert final["parallel_tool_calls"] is False and final["prompt_cache_key"] == "conv-1"
    with pytest.raises(openai.NotFoundError):  # store false: nothing kept
        await a.responses.retrieve(final["id"])


async def test_retrieve_is_per_account(a, b, server):
    r = await a.responses.create(model="demo", input=QUESTION)
    got = await a.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == SENTENCE and got.usage == r.usage
    with pytest.raises(openai.NotFoundError) as ei:
        await b.responses.retrieve(r.id)
    assert ei.value.body == {"message": f"No response found with id '{r.id}'.",
                             "type": "invalid_request_error", "param": None, "code": None}
    assert server.app[RECORDS][-1].key == "acct-b"
    assert server.app[RESPONSES].get("acct-a", r.id)["id"] == r.id
    assert server.app[RESPONSES].get("acct-b", r.id) is None
    assert server.app[RESPONSES].ids("acct-a") == [r.id] and server.app[RESPONSES].ids("acct-b") == []


async def test_retrieve_stream_replays_after_a_sequence_number(server, a):
    events = await raw_events(server, {"model": "demo", "input": QUESTION, "stream": True})
    rid = events[0]["response"]["id"]
    replay = await a.responses.retrieve(rid, stream=True, starting_after=5)
    got = [event.model_dump(exclude_unset=True) async for event in replay]
    assert [e["sequence_number"] for e in got] == list(range(6, len(events)))
    assert [e["type"] for e in got] == TEXT_EVENTS[6:]
    assert got[-1]["response"]["id"] == rid
    async with aiohttp.ClientSession() as http:
        url = server.make_url(f"/v1/responses/{rid}").with_query(stream="true", starting_after=5)
        async with http.get(url, headers={"Authorization": "Bearer acct-a"}) as resp:
            assert parse_sse(await resp.read()) == events[6:]  # the very events the stream sent


async def test_delete(a, b):
    r = await a.responses.create(model="demo", input=QUESTION)
    with pytest.raises(openai.NotFoundError):
        await b.responses.delete(r.id)
    raw = await a.responses.with_raw_response.delete(r.id)
    assert orjson.loads(raw.content) == {"id": r.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await a.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await a.responses.delete(r.id)


async def test_background_and_cancel(a, b):
    fg = await a.responses.create(model="demo", input=QUESTION)
    with pytest.raises(openai.BadRequestError) as ei:
        await a.responses.cancel(fg.id)
    assert "background" in ei.value.message
    bg = await a.responses.create(model="demo", input=QUESTION, background=True)
    assert bg.status == "queued" and bg.output == [] and bg.usage is None and bg.background
    with pytest.raises(openai.NotFoundError):
        await b.responses.cancel(bg.id)
    cancelled = await a.responses.cancel(bg.id)
    assert cancelled.status == "cancelled" and cancelled.output == []
    assert (await a.responses.retrieve(bg.id)).status == "cancelled"
    done = await a.responses.create(model="demo", input=QUESTION, background=True)
    polls = [(await a.responses.retrieve(done.id)).status for _ in range(3)]
    assert polls == ["in_progress", "completed", "completed"]
    again = await a.responses.cancel(done.id)  # finished: it comes back as it is
    assert again.status == "completed" and again.output_text == SENTENCE
    with pytest.raises(openai.BadRequestError) as ei:
        await a.responses.create(model="demo", input=QUESTION, background=True, store=False)
    assert ei.value.param == "background"


async def test_input_items(a, b, server):
    turns = [{"role": "user", "content": f"turn {i}"} for i in range(3)]
    r = await a.responses.create(model="demo", input=turns)
    page = await a.responses.input_items.list(r.id)
    assert [item.content[0].text for item in page.data] == ["turn 2", "turn 1", "turn 0"]
    assert page.data[0].role == "user" and page.data[0].id.startswith("msg_")
    asc = [item.id async for item in a.responses.input_items.list(r.id, order="asc", limit=2)]
    assert asc == [item.id for item in reversed(page.data)]
    async with aiohttp.ClientSession() as http:
        url = server.make_url(f"/v1/responses/{r.id}/input_items").with_query(limit=2, order="asc")
        async with http.get(url, headers={"Authorization": "Bearer acct-a"}) as resp:
            body = await resp.json()
    assert body["object"] == "list" and body["has_more"] is True and len(body["data"]) == 2
    assert (body["first_id"], body["last_id"]) == (asc[0], asc[1])
    for item in body["data"]:
        ITEM.validate_python(item)
    with pytest.raises(openai.NotFoundError):
        await b.responses.input_items.list(r.id)


async def test_previous_response_id_is_per_account_and_cached(a, b):
    first = await a.responses.create(model="demo", input=QUESTION)
    second = await a.responses.create(model="demo", input="And tomorrow?",
                                      previous_response_id=first.id)
    assert second.previous_response_id == first.id
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached == first.usage.total_tokens
    assert second.usage.input_tokens == cached + len("And tomorrow?") // 4 + 1
    with pytest.raises(openai.NotFoundError) as ei:
        await b.responses.create(model="demo", input="And tomorrow?",
                                 previous_response_id=first.id)
    assert ei.value.code == "previous_response_not_found"
    assert ei.value.param == "previous_response_id"
    assert ei.value.body["message"] == f"Previous response with id '{first.id}' not found."


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": "hi"}, "model", "missing_required_parameter"),
    ({"model": "demo"}, "input", "missing_required_parameter"),
    ({"model": "demo", "input": {"text": "hi"}}, "input", "invalid_type"),
    ({"model": "demo", "input": ["hi"]}, "input[0]", "invalid_type"),
    ({"model": "demo", "input": [{"role": "robot", "content": "x"}]}, "input[0].role",
     "invalid_value"),
    ({"model": "demo", "input": [{"type": "telepathy"}]}, "input[0].type", "invalid_value"),
    ({"model": "demo", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name",
     "missing_required_parameter"),
    ({"model": "demo", "input": "hi", "temperature": "hot"}, "temperature", "invalid_type"),
    ({"model": "demo", "input": "hi", "text": {"format": {"type": "json_schema"}}},
     "text.format.name", "missing_required_parameter"),
])
async def test_validation(server, body, param, code):
    async with aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/v1/responses"), json=body,
                             headers={"Authorization": "Bearer acct-a"}) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


async def test_script_status_and_truncate(a, server):
    server.app[SCRIPT]["acct-a"] = [status(500), truncate_after(2, clean=True), truncate_after(2)]
    with pytest.raises(openai.InternalServerError):
        await a.responses.create(model="demo", input=QUESTION)
    events = await raw_events(server, {"model": "demo", "input": QUESTION, "stream": True})
    assert [e["type"] for e in events] == TEXT_EVENTS[:6]  # the head, then 2 deltas, no end
    with pytest.raises(aiohttp.ClientPayloadError):
        await raw_events(server, {"model": "demo", "input": QUESTION, "stream": True})
    assert (await a.responses.create(model="demo", input=QUESTION)).status == "completed"


async def test_store_is_bounded(a, server):
    server.app[RESPONSES].limit = 2
    ids = [(await a.responses.create(model="demo", input=QUESTION)).id for _ in range(3)]
    assert len(server.app[RESPONSES]) == 2
    with pytest.raises(openai.NotFoundError):
        await a.responses.retrieve(ids[0])
    assert (await a.responses.retrieve(ids[2])).id == ids[2]


async def test_the_cli_fake_serves_responses(tmp_path: Path):
    procs = Processes(tmp_path)
    try:
        url = await procs.fake_upstream("--chunks", "3")
        async with openai.AsyncOpenAI(base_url=url, api_key="acct-a", max_retries=0) as c:
            r = await c.responses.create(model="demo", input=QUESTION)
            assert r.output_text == SENTENCE and r.usage.output_tokens == 3
            with pytest.raises(openai.NotFoundError):
                await c.responses.retrieve("resp_missing")
    finally:
        procs.stop_all()
