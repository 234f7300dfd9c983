"""Where a channel's egress proxy setting sends a request: the proxy without its credentials (aiohttp's
exception texts show the proxy URL they get) and the credentials as a Proxy-Authorization value."""

from __future__ import annotations

import base64

import pytest
from yarl import URL

from relay.config import TimeoutConfig
from relay.egress import mask_proxy
from relay.types import Target, UpstreamRequest, with_egress
from relay.upstream import Upstream


def ureq(url: str, proxy: str | None) -> UpstreamRequest:
    return UpstreamRequest("POST", url, {}, b"{}", proxy)


def test_credentials_are_taken_out_of_the_proxy_url() -> None:
    up = Upstream(TimeoutConfig())
    proxy, header = up._proxy_for(ureq("https://api.example.com/v1/chat/completions", "http://relay:s%3Acret@p.internal:3128"))
    assert proxy == URL("http://p.internal:3128") and proxy.user is None
    assert header == "Basic " + base64.b64encode(b"relay:s:cret").decode()
    assert up._proxy_for(ureq("https://x/v1", "http://p.internal:3128")) == (URL("http://p.internal:3128"), None)


def test_env_takes_the_schemes_proxy_unless_no_proxy_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "http://u:pw@secure.proxy:8443")
    monkeypatch.setenv("no_proxy", "internal.example")
    up = Upstream(TimeoutConfig())
    proxy, header = up._proxy_for(ureq("https://api.openai.com/v1/x", "env"))
    assert proxy == URL("http://secure.proxy:8443") and header == "Basic " + base64.b64encode(b"u:pw").decode()
    assert up._proxy_for(ureq("http://api.openai.com/v1/x", "env")) == (None, None)  # no http_proxy set
    assert up._proxy_for(ureq("https://vllm.internal.example/v1/x", "env")) == (None, None)  # NO_PROXY


def test_the_target_channels_proxy_rides_on_the_request_and_is_shown_masked() -> None:
    target = Target("c", "openai", "https://x/v1", 0, "sk", "m", proxy="http://u:pw@p:1")
    assert with_egress(ureq("https://x/v1/chat/completions", None), target).proxy == "http://u:pw@p:1"
    direct = Target("c", "openai", "https://x/v1", 0, "sk", "m")
    same = ureq("https://x/v1/a", None)
    assert with_egress(same, direct) is same
    assert "pw" not in repr(target) and "pw" not in repr(with_egress(same, target))
    assert mask_proxy("http://u:pw@p:1") == "http://***@p:1" and mask_proxy("env") == "env"
