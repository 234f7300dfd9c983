"""The client's address behind a reverse proxy: believed only from server.trusted_proxies."""

from __future__ import annotations

import aiohttp
import pytest

from relay.client_addr import ClientAddress
from relay.config import ConfigError, parse_config
from tests.conftest import RelayFactory
from tests.e2e.test_admin import ADMIN_TOKEN, assert_error, call, chat, create


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def chat_from(http: aiohttp.ClientSession, url: str, secret: str, headers: dict[str, str]) -> int:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {secret}", **headers}) as resp:
        await resp.read()
        return resp.status


async def test_forwarded_address_is_believed_only_from_a_trusted_proxy(relay_factory: RelayFactory, http) -> None:
    behind = await relay_factory(admin_token=ADMIN_TOKEN, server={"trusted_proxies": ["127.0.0.1/32"]})
    exposed = await relay_factory(admin_token=ADMIN_TOKEN)
    for relay in (behind, exposed):
        k = await create(http, relay, ip_allow=["10.0.0.0/8"])
        assert_error(await chat(http, relay, k["key"]), 403, "ip_not_allowed")  # 127.0.0.1 itself
        forwarded = await chat_from(http, relay.url, k["key"], {"X-Forwarded-For": "198.51.100.7, 10.1.2.3"})
        real_ip = await chat_from(http, relay.url, k["key"], {"X-Real-IP": "10.9.9.9"})
        if relay is behind:  # the nearest untrusted hop is the client: 10.1.2.3
            assert (forwarded, real_ip) == (200, 200)
        else:  # a client cannot pick its address by sending the header itself
            assert (forwarded, real_ip) == (403, 403)


async def test_a_spoofed_left_hop_does_not_win(relay_factory: RelayFactory, http) -> None:
    relay = await relay_factory(admin_token=ADMIN_TOKEN, server={"trusted_proxies": ["127.0.0.1"]})
    k = await create(http, relay, ip_allow=["10.0.0.0/8"])
    # the client wrote 10.0.0.1 itself; the proxy appended the address it really came from
    assert await chat_from(http, relay.url, k["key"], {"X-Forwarded-For": "10.0.0.1, 203.0.113.5"}) == 403


def test_trusted_proxy_chain() -> None:
    addr = ClientAddress(["127.0.0.1", "10.0.0.0/8"])
    hdr = {"X-Forwarded-For": "203.0.113.9, 198.51.100.1, 10.0.0.2"}
    assert addr.of("127.0.0.1", hdr) == "198.51.100.1"
    assert addr.of("192.0.2.1", hdr) == "192.0.2.1"
    assert addr.of("127.0.0.1", {"X-Forwarded-For": "garbage"}) == "127.0.0.1"
    assert addr.of("127.0.0.1", {"X-Forwarded-For": "10.0.0.3"}) == "10.0.0.3"  # all trusted: the first
    assert addr.of("127.0.0.1", {}) == "127.0.0.1"


def test_bad_trusted_proxy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server.trusted_proxies\[0\]"):
        parse_config({"server": {"trusted_proxies": ["not-an-ip"]}}, {})


async def test_405_names_the_allowed_methods(relay_factory: RelayFactory, http) -> None:
    relay = await relay_factory(admin_token=ADMIN_TOKEN)
    a = await call(http, "GET", relay.v1 + "/chat/completions", headers={})
    assert_error(a, 405, "method_not_allowed")
    assert a.headers["Allow"] == "POST"
