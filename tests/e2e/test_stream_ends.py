"""A passthrough stream is finished only by its protocol's own last event, whatever its line ends.

The upstream here is a scripted one: it sends exactly the bytes a test gives it, then ends the body
cleanly, so a stream cut after text that merely mentions `[DONE]` or `message_stop` can be told from a
finished one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.app import start
from relay.config import parse_config
from tests.conftest import CLIENT_KEY

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def chat_chunk(text: str, eol: bytes = b"\n") -> bytes:
    obj = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "demo",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(obj) + eol + eol


def anthropic_event(kind: str, data: dict[str, Any], eol: bytes = b"\n") -> bytes:
    return b"event: " + kind.encode() + eol + b"data: " + orjson.dumps({"type": kind, **data}) + eol + eol


MESSAGE_START = anthropic_event("message_start", {"message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}})


def text_delta(text: str, eol: bytes = b"\n") -> bytes:
    return anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}, eol)


@pytest.fixture
async def scripted(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> tuple[TestServer, list[bytes]]:
    """An upstream that streams the bytes in `body[0]` (OpenAI and Anthropic paths alike) and ends cleanly."""
    body: list[bytes] = [b""]

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(body[0])
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    app.router.add_post("/v1/messages", stream)
    return await aiohttp_server(app), body


@pytest.fixture
async def relay_url(tmp_path: Path, scripted: tuple[TestServer, list[bytes]]) -> Any:
    server, _ = scripted
    base = str(server.make_url("/v1"))
    raw = {
        "database": str(tmp_path / "relay.db"),
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [
            {"name": "oa", "type": "openai", "base_url": base, "keys": ["k1"], "models": ["demo"]},
            {"name": "an", "type": "anthropic", "base_url": str(server.make_url("")), "keys": ["k2"],
             "models": ["claude"]},
        ],
        "billing": {"require_prices": False},
        "log_level": "warning",
    }
    runner, url = await start(parse_config(raw, {}), "127.0.0.1", 0)
    yield url
    await runner.cleanup()


async def chat(url: str, http: aiohttp.ClientSession) -> bytes:
    req = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=req, headers=AUTH) as resp:
        assert resp.status == 200
        return await resp.read()


async def messages(url: str, http: aiohttp.ClientSession) -> bytes:
    req = {"model": "claude", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/messages", json=req, headers={"x-api-key": CLIENT_KEY}) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_done_inside_text_is_not_the_end_of_the_stream(relay_url, scripted) -> None:
    scripted[1][0] = chat_chunk("Hel") + chat_chunk("the token data: [DONE] ends a stream")
    async with aiohttp.ClientSession() as http:
        raw = await chat(relay_url, http)
    assert raw.startswith(scripted[1][0])
    tail = raw[len(scripted[1][0]):]
    assert b'"error"' in tail and b"ended before it finished" in tail


async def test_a_stream_ending_with_done_is_complete(relay_url, scripted) -> None:
    scripted[1][0] = chat_chunk("[DONE]") + b"data: [DONE]\n\n"
    async with aiohttp.ClientSession() as http:
        raw = await chat(relay_url, http)
    assert raw == scripted[1][0]


async def test_message_stop_inside_text_is_not_the_end_of_a_messages_stream(relay_url, scripted) -> None:
    scripted[1][0] = MESSAGE_START + text_delta("then event: message_stop\nfollows")
    async with aiohttp.ClientSession() as http:
        raw = await messages(relay_url, http)
    tail = raw[len(scripted[1][0]):]
    assert b"event: error" in tail and b"ended before it finished" in tail


@pytest.mark.parametrize("eol", [b"\r", b"\r\n"], ids=["cr", "crlf"])
async def test_cr_and_crlf_streams_pass_through_whole(relay_url, scripted, eol) -> None:
    scripted[1][0] = b"".join(chat_chunk(str(i), eol) for i in range(3)) + b"data: [DONE]" + eol + eol
    async with aiohttp.ClientSession() as http:
        raw = await chat(relay_url, http)
    assert raw == scripted[1][0]  # every event, complete, and no error appended


async def test_cr_only_messages_stream_ends_cleanly(relay_url, scripted) -> None:
    eol = b"\r"
    scripted[1][0] = MESSAGE_START.replace(b"\n", eol) + text_delta("ok", eol) + anthropic_event(
        "message_stop", {}, eol)
    async with aiohttp.ClientSession() as http:
        raw = await messages(relay_url, http)
    assert raw == scripted[1][0]
