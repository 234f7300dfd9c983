"""The upstream calls' HTTP/1.1 client (relay/http1.py) against real servers: aiohttp's, raw sockets for
what aiohttp never sends, and TLS with a certificate made for the test."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from relay.http1 import BodyError, ConnectFailed, HttpError, Pool


async def _app(aiohttp_server, handler, **kwargs):  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await aiohttp_server(app, **kwargs)


async def test_keep_alive_connections_are_reused_and_bodies_arrive_whole(aiohttp_server) -> None:
    seen: set[int] = set()

    async def echo(request: web.Request) -> web.Response:
        seen.add(id(request.transport))
        return web.Response(body=b"got " + await request.read(), headers={"X-Method": request.method})

    server = await _app(aiohttp_server, echo)
    pool = Pool()
    for i in range(20):
        resp = await pool.request("POST", str(server.make_url("/v1/x?a=1")), {"Content-Type": "text/plain"},
                                  b"body %d" % i, 5)
        assert resp.status == 200 and resp.headers["x-method"] == "POST"
        assert await resp.read() == b"got body %d" % i
        resp.close()
    assert len(seen) == 1  # one connection for all twenty
    pool.close()


async def test_a_stream_arrives_piece_by_piece(aiohttp_server) -> None:
    go = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b"data: one\n\n")
        await go.wait()
        await out.write(b"data: two\n\n")
        return out

    server = await _app(aiohttp_server, sse)
    pool = Pool()
    resp = await pool.request("POST", str(server.make_url("/s")), {}, b"{}", 5)
    assert resp.content_length is None
    assert await asyncio.wait_for(resp.piece(), 2) == b"data: one\n\n"  # before the server sent the rest
    go.set()
    assert await resp.read() == b"data: two\n\n"
    resp.close()
    pool.close()


async def test_gzip_is_decoded_and_an_unknown_encoding_fails(aiohttp_server) -> None:
    async def packed(request: web.Request) -> web.Response:
        if request.path == "/gzip":
            return web.Response(body=gzip.compress(b'{"ok": true}' * 100), headers={"Content-Encoding": "gzip"})
        return web.Response(body=b"\x00\x01", headers={"Content-Encoding": "br"})

    server = await _app(aiohttp_server, packed)
    pool = Pool()
    resp = await pool.request("GET", str(server.make_url("/gzip")), {}, None, 5)
    assert await resp.read() == b'{"ok": true}' * 100 and resp.content_length is None
    resp.close()
    with pytest.raises(BodyError):
        await pool.request("GET", str(server.make_url("/br")), {}, None, 5)
    pool.close()


async def test_a_chunked_request_body_arrives_whole(aiohttp_server) -> None:
    got: list[tuple[str | None, bytes]] = []

    async def sink(request: web.Request) -> web.Response:
        got.append((request.headers.get("Transfer-Encoding"), await request.read()))
        return web.Response(text="ok")

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(50):
            yield b"%05d" % i

    server = await _app(aiohttp_server, sink)
    pool = Pool()
    resp = await pool.request("POST", str(server.make_url("/up")), {}, pieces(), 5)
    assert await resp.read() == b"ok"
    resp.close()
    assert got == [("chunked", b"".join(b"%05d" % i for i in range(50)))]
    pool.close()


async def test_a_response_left_unread_closes_its_connection_and_the_next_call_gets_a_fresh_one(aiohttp_server) -> None:
    seen: list[int] = []

    async def big(request: web.Request) -> web.Response:
        seen.append(id(request.transport))
        return web.Response(body=b"x" * (2 * 1024 * 1024))

    server = await _app(aiohttp_server, big)
    pool = Pool()
    resp = await pool.request("GET", str(server.make_url("/big")), {}, None, 5)
    first = await resp.piece()
    await asyncio.sleep(0.3)  # the client reads no more: the connection stops reading, memory stays bounded
    assert resp._size <= 1024 * 1024, resp._size  # noqa: SLF001
    assert len(first) < 2 * 1024 * 1024
    resp.close()
    resp = await pool.request("GET", str(server.make_url("/big")), {}, None, 5)
    assert len(await resp.read()) == 2 * 1024 * 1024
    resp.close()
    assert len(set(seen)) == 2
    pool.close()


async def test_an_idle_connection_the_server_closed_is_not_used(aiohttp_server) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    server = await _app(aiohttp_server, ok, keepalive_timeout=0.05)
    pool = Pool()
    for _ in range(3):
        resp = await pool.request("GET", str(server.make_url("/")), {}, None, 5)
        assert await resp.read() == b"ok"
        resp.close()
        (idle,) = pool._idle[next(iter(pool._idle))]  # noqa: SLF001 - the connection kept for the next call
        async with asyncio.timeout(5):
            while idle.transport is not None:  # until the server's close arrived (its timer may run late)
                await asyncio.sleep(0.02)
    pool.close()


async def _raw_server(answer: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/x"


@pytest.mark.parametrize("answer, body", [
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", b"until the end"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal", b"final"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
], ids=["eof-delimited", "100-continue", "chunked"])
async def test_framings_aiohttp_servers_do_not_send(answer: bytes, body: bytes) -> None:
    server, url = await _raw_server(answer)
    async with server:
        pool = Pool()
        resp = await pool.request("GET", url, {}, None, 5)
        assert resp.status == 200 and await resp.read() == body
        resp.close()
        pool.close()


@pytest.mark.parametrize("answer", [
    b"",  # closed without a word
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",  # cut off
], ids=["closed", "garbage", "cut"])
async def test_broken_answers_are_errors(answer: bytes) -> None:
    server, url = await _raw_server(answer)
    async with server:
        pool = Pool()
        with pytest.raises(HttpError):
            resp = await pool.request("GET", url, {}, None, 5)
            await resp.read()
        pool.close()


async def test_no_server_and_a_header_with_a_line_break_fail_to_connect(unused_tcp_port: int) -> None:
    pool = Pool()
    with pytest.raises(ConnectFailed):
        await pool.request("GET", f"http://127.0.0.1:{unused_tcp_port}/", {}, None, 5)
    server, url = await _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    async with server:
        with pytest.raises(ConnectFailed):
            await pool.request("GET", url, {"X-Evil": "a\r\nInjected: yes"}, None, 5)
    pool.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls_is_verified_against_the_trust_store(aiohttp_server, certificate, monkeypatch) -> None:
    cert, key = certificate
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="secure")

    server = await _app(aiohttp_server, ok, ssl=ctx)
    url = f"https://127.0.0.1:{server.port}/v1/chat"
    untrusting = Pool()
    with pytest.raises(ConnectFailed):  # a certificate nobody vouches for
        await untrusting.request("GET", url, {}, None, 5)
    untrusting.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system trust store, as OpenSSL reads it
    pool = Pool()
    resp = await pool.request("GET", url, {}, None, 5)
    assert await resp.read() == b"secure"
    resp.close()
    pool.close()


async def test_the_relay_streams_from_an_https_upstream(aiohttp_server, certificate, monkeypatch, relay_factory) -> None:
    """A real provider is HTTPS: chat, a stream and the usage ledger through a TLS upstream, the official SDK
    as the client."""
    import openai

    from bench import fake_upstream as fake
    from tests.conftest import CLIENT_KEY, wait_ledger

    cert, key = certificate
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    tls = await aiohttp_server(fake.build_app(fake.FakeOptions()), ssl=ctx)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    base = f"https://127.0.0.1:{tls.port}/v1"
    relay = await relay_factory(channels=[
        {"name": "tls", "type": "openai", "base_url": base, "keys": ["acct-0"], "models": ["demo"]},
    ])
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0)
    answer = await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    parts = [c.choices[0].delta.content or "" async for c in await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices]
    assert "".join(parts) == answer.choices[0].message.content
    rows = await wait_ledger(relay.database, 2)
    assert [r["status"] for r in rows] == [200, 200] and all(r["completion_tokens"] > 0 for r in rows)
    await client.close()


async def test_a_connection_that_answered_twice_is_not_reused() -> None:
    server, url = await _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
    async with server:
        pool = Pool()
        resp = await pool.request("GET", url, {}, None, 5)
        assert await resp.read() == b"ok"
        resp.close()
        assert not pool._idle.get(next(iter(pool._idle), None), [])  # noqa: SLF001 - nothing kept to reuse
        pool.close()
