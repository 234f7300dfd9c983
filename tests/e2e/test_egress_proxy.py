"""A channel's upstream traffic through an HTTP proxy (`proxy:`): only that channel's connections go through
it, streams included; a proxy that refuses moves the request to another channel; the proxy's password
shows up in no answer and no log line."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ACCOUNTS, CLIENT_KEY, RelayFactory, Upstream, wait_ledger
from tests.fakes.http_proxy import ForwardProxy
from tests.procs import auth

PASSWORD = "pr0xy-s3cret-Pa55"


@pytest.fixture
async def forward_proxy() -> AsyncIterator[tuple[ForwardProxy, str]]:
    proxy = ForwardProxy(auth=("relay", PASSWORD))
    url = await proxy.start()
    yield proxy, url
    await proxy.close()


def with_auth(url: str, password: str = PASSWORD) -> str:
    return url.replace("http://", f"http://relay:{password}@")


def channel(name: str, upstream: Upstream, models: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS), "models": models, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_only_the_channel_with_a_proxy_goes_through_it_streams_included(
    relay_factory: RelayFactory, upstream: Upstream, forward_proxy: tuple[ForwardProxy, str],
) -> None:
    proxy, url = forward_proxy
    relay = await relay_factory(channels=[
        channel("proxied", upstream, ["demo"], proxy=with_auth(url)),
        channel("direct", upstream, ["gpt-4o-mini"]),
    ])
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    async with client:
        msgs: Any = [{"role": "user", "content": "hi"}]
        answer = await client.chat.completions.create(model="demo", messages=msgs)
        assert answer.choices[0].message.content
        text = ""
        async for chunk in await client.chat.completions.create(model="demo", messages=msgs, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        assert text == answer.choices[0].message.content
        through = len(proxy.log)
        assert through == 2
        assert all(e.authorized and e.target.startswith(upstream.url) for e in proxy.log)
        await client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
        assert len(proxy.log) == through  # the channel without `proxy:` connects directly
    assert len(upstream.records) == 3
    # what the upstream received carries no trace of the proxy or its credentials
    assert all("Proxy-Authorization" not in r.headers for r in upstream.records)


@pytest.mark.parametrize("refusal", ["nothing listening", "wrong password"])
async def test_a_refusing_proxy_fails_over_and_its_password_is_never_shown(
    relay_factory: RelayFactory, upstream: Upstream, forward_proxy: tuple[ForwardProxy, str],
    caplog: pytest.LogCaptureFixture, refusal: str,
) -> None:
    proxy, url = forward_proxy
    bad = f"http://relay:{PASSWORD}@127.0.0.1:{free_port()}" if refusal == "nothing listening" else with_auth(url, PASSWORD + "x")
    secret = bad.split("relay:", 1)[1].split("@", 1)[0]
    relay = await relay_factory(channels=[
        channel("proxied", upstream, ["demo"], proxy=bad, priority=1),
        channel("direct", upstream, ["demo"]),
    ], log_level="debug")
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with aiohttp.ClientSession() as http:
        for stream in (False, True):
            body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            async with http.post(relay.v1 + "/chat/completions", json=body, headers=auth(CLIENT_KEY)) as resp:
                assert resp.status == 200
                seen.append(str(resp.headers) + await resp.text())
        for path in ("/status", "/metrics", "/healthz", "/status.json", "/v1/models"):
            async with http.get(relay.url + path, headers=auth(CLIENT_KEY)) as resp:
                seen.append(await resp.text())
    rows = await wait_ledger(relay.database, 2)
    assert [r["channel"] for r in rows] == ["direct", "direct"]
    assert all(r["attempts"] >= 2 for r in rows)  # the proxied channel was tried first, and failed
    if refusal == "wrong password":
        assert proxy.log and all(not e.authorized and e.status == 407 for e in proxy.log)
    assert "Proxy-Authorization" not in str([r.headers for r in upstream.records])
    for text in [*seen, caplog.text]:
        assert secret not in text


async def test_proxy_env_reads_http_proxy_and_honours_no_proxy(
    relay_factory: RelayFactory, upstream: Upstream, forward_proxy: tuple[ForwardProxy, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, url = forward_proxy
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, with_auth(url))
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    relay = await relay_factory(channels=[channel("env", upstream, ["demo"], proxy="env")])
    async with aiohttp.ClientSession() as http:
        async with http.post(relay.v1 + "/chat/completions", json=body, headers=auth(CLIENT_KEY)) as resp:
            assert resp.status == 200
        assert len(proxy.log) == 1 and proxy.log[0].authorized
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "127.0.0.1,localhost")
        bypassed = await relay_factory(channels=[channel("env", upstream, ["demo"], proxy="env")])
        async with http.post(bypassed.v1 + "/chat/completions", json=body, headers=auth(CLIENT_KEY)) as resp:
            assert resp.status == 200
        assert len(proxy.log) == 1  # NO_PROXY names the upstream's host: direct
        direct = await relay_factory(channels=[channel("plain", upstream, ["demo"])])
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name)
        async with http.post(direct.v1 + "/chat/completions", json=body, headers=auth(CLIENT_KEY)) as resp:
            assert resp.status == 200
        assert len(proxy.log) == 1  # without the option the environment is not read
    assert len(upstream.records) == 3


async def test_the_forward_proxy_tunnels_connect(upstream: Upstream, forward_proxy: tuple[ForwardProxy, str]) -> None:
    """How https upstreams are reached: a CONNECT tunnel, then the upstream's own protocol inside it."""
    proxy, url = forward_proxy
    host_port = upstream.url.split("//", 1)[1].split("/", 1)[0]
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = base64.b64encode(f"relay:{PASSWORD}".encode()).decode()
    writer.write(f"CONNECT {host_port} HTTP/1.1\r\nHost: {host_port}\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.write(f"GET /v1/models HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer acct-0\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 200") and b'"object":"list"' in answer
    assert [(e.method, e.target, e.status) for e in proxy.log] == [("CONNECT", host_port, 200)]


async def test_health_probes_go_through_the_channels_proxy(
    relay_factory: RelayFactory, upstream: Upstream, forward_proxy: tuple[ForwardProxy, str],
) -> None:
    proxy, url = forward_proxy
    await relay_factory(
        channels=[channel("proxied", upstream, ["demo"], proxy=with_auth(url))],
        health={"enabled": True, "interval": 0.2},
    )
    for _ in range(100):  # bounded: 5 s for every account's first probe
        if {r.key for r in upstream.records} >= set(ACCOUNTS):
            break
        await asyncio.sleep(0.05)
    probes = [r for r in upstream.records if r.path.endswith("/chat/completions")]
    assert {r.key for r in probes} >= set(ACCOUNTS)
    assert len(proxy.log) >= len(probes) and all(e.authorized for e in proxy.log)
