"""Connection-level behaviour: slow clients, the request id, unknown paths."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import CLIENT_KEY, RelayFactory


async def test_a_client_that_never_finishes_its_headers_is_disconnected(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(server={"read_timeout": 1.0})
    host, port = relay.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed_after = None
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(25):  # a header line every 0.2 s, never the blank line that ends them
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                    closed_after = loop.time() - started
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_after = loop.time() - started
                break
    finally:
        writer.close()
    assert closed_after is not None, "the relay kept a connection whose headers never ended"
    assert closed_after < 3.0


async def test_request_id_and_unknown_path_in_openai_shape(relay_factory: RelayFactory) -> None:
    relay = await relay_factory()
    async with aiohttp.ClientSession() as s:
        async with s.get(relay.v1 + "/nope", headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:
            assert r.status == 404
            body = await r.json()
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert r.headers["x-request-id"].startswith("req_")
