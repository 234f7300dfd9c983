"""End to end: reasoning through a `gemini` channel with the openai SDK: reasoning_effort becomes thinkingConfig,
thought parts come back as reasoning_content, and a function call's thought signature makes the round trip
(the fake refuses a gemini-3 function call turn without it, as Google does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.e2e.test_gemini_channel import ASK, WEATHER, Env
from tests.fakes import gemini_upstream as gem

FLASH = "gemini-2.5-flash"
PRO3 = "gemini-3-pro-preview"


@pytest.fixture
async def env(aiohttp_server: Callable[..., Awaitable[TestServer]], relay_factory: Any) -> AsyncIterator[Env]:
    fake = await aiohttp_server(gem.build_app(("gk-1",)))
    relay = await relay_factory(
        channels=[{"name": "gem", "type": "gemini", "base_url": str(fake.make_url("")).rstrip("/"),
                   "keys": ["gk-1"], "models": [FLASH, PRO3]}],
        prices={FLASH: {"input": 0.3, "output": 2.5}, PRO3: {"input": 2, "output": 12}},
    )
    e = Env(fake, relay)
    async with e.client:
        yield e


@pytest.mark.parametrize("model, effort, config", [
    (FLASH, "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    (FLASH, "low", {"thinkingBudget": 2048, "includeThoughts": True}),
    (PRO3, "low", {"thinkingLevel": "low", "includeThoughts": True}),
])
async def test_effort_becomes_thinking_config_and_thoughts_come_back(env: Env, model: str, effort: Any,
                                                                    config: dict[str, Any]) -> None:
    resp = await env.client.chat.completions.create(model=model, messages=ASK, reasoning_effort=effort)
    msg: Any = resp.choices[0].message
    assert msg.content == gem.TEXT and msg.reasoning_content == gem.THOUGHT
    assert env.records[0].body["generationConfig"]["thinkingConfig"] == config


async def test_streamed_thoughts_as_reasoning_deltas(env: Env) -> None:
    stream = await env.client.chat.completions.create(model=FLASH, messages=ASK, reasoning_effort="medium", stream=True)
    reasoning, text = "", ""
    async for chunk in stream:
        if chunk.choices:
            delta: Any = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            text += delta.content or ""
    assert reasoning == gem.THOUGHT and text == gem.TEXT


@pytest.mark.parametrize("stream", [False, True])
async def test_thought_signature_round_trip(env: Env, stream: bool) -> None:
    messages: list[Any] = list(ASK)
    if stream:
        calls: list[Any] = []
        async for chunk in await env.client.chat.completions.create(model=PRO3, messages=messages, tools=[WEATHER],
                                                                    reasoning_effort="high", stream=True):
            for tc in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
                calls.append(tc.model_dump(exclude_none=True))
        [call] = calls
        call.pop("index")
        assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
    else:
        first = await env.client.chat.completions.create(model=PRO3, messages=messages, tools=[WEATHER],
                                                         reasoning_effort="high")
        assistant = first.choices[0].message.model_dump(exclude_none=True)
        call = assistant["tool_calls"][0]
    assert call["extra_content"] == {"google": {"thought_signature": gem.SIGNATURE}}
    messages += [assistant, {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 18}'}]
    second = await env.client.chat.completions.create(model=PRO3, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == 'The tool said: {"temp":18}'
    model_turn = env.records[1].body["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == gem.SIGNATURE


async def test_gemini_3_refuses_a_call_turn_without_its_signature(env: Env) -> None:
    first = await env.client.chat.completions.create(model=PRO3, messages=ASK, tools=[WEATHER])
    assistant: Any = first.choices[0].message.model_dump(exclude_none=True)
    del assistant["tool_calls"][0]["extra_content"]
    with pytest.raises(openai.BadRequestError, match="thought_signature"):
        await env.client.chat.completions.create(model=PRO3, tools=[WEATHER], messages=[
            *ASK, assistant, {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "18"}])
