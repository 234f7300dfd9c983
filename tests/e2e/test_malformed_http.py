"""Requests that are not valid HTTP: OpenAI-shaped 400s, and no request bytes in the log, ever."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson
import pytest

from tests.conftest import CLIENT_KEY, Relay

CANARY_PROMPT = "canary-prompt-7f3e9a"


async def raw_exchange(relay: Relay, data: bytes) -> bytes:
    host, port = relay.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()


def bare_lf_request() -> bytes:
    body = orjson.dumps({"model": "demo", "messages": [{"role": "user", "content": CANARY_PROMPT}]})
    head = (
        "POST /v1/chat/completions HTTP/1.1\nHost: x\n"
        f"Authorization: Bearer {CLIENT_KEY}\nContent-Type: application/json\nContent-Length: {len(body)}\n\n"
    )
    return head.encode() + body


GARBAGE = [
    bare_lf_request(),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + CANARY_PROMPT.encode() + b"\r\n\r\n",  # TLS to an HTTP port
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: " + CANARY_PROMPT.encode() + b"\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: nope\r\nAuthorization: Bearer "
    + CLIENT_KEY.encode() + b"\r\n\r\n",
]


@pytest.mark.parametrize("data", GARBAGE, ids=["bare-lf", "tls", "bad-header-name", "bad-content-length"])
async def test_malformed_request_gets_openai_400_and_no_bytes_in_the_log(relay: Relay, data: bytes, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    raw = await raw_exchange(relay, data)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), raw[:200]
    assert b"application/json" in head
    err = orjson.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "malformed_request"
    text = caplog.text
    assert CANARY_PROMPT not in text and CLIENT_KEY not in text
    assert CANARY_PROMPT.encode() not in raw and CLIENT_KEY.encode() not in raw
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_flood_of_garbage_logs_one_line(relay: Relay, caplog) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(30):
        raw = await raw_exchange(relay, GARBAGE[2])
        assert raw.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))
    lines = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(lines) <= 1


MULTIPART_BAD = [
    b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b\r\nBad Header Line\r\n\r\nxx\r\n--b--\r\n",
    b"--b\r\n\x00\x01\x02\r\n\r\n--b--\r\n",
    b"garbage without a boundary",
]


@pytest.mark.parametrize("body", MULTIPART_BAD, ids=["bad-part-header", "binary-part-header", "no-boundary"])
async def test_a_malformed_multipart_upload_is_a_400(relay: Relay, body: bytes) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        relay.v1 + "/audio/transcriptions", data=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "multipart/form-data; boundary=b"},
    ) as resp:
        assert resp.status == 400  # not a 500 the SDK would retry
        err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_multipart"
