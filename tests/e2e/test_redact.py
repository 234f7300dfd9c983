"""An upstream error body passed to the client never carries an upstream key of the relay."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from bench.fake_upstream import status
from relay.redact import redact
from tests.conftest import CLIENT_KEY, RelayFactory, Upstream

KEYS = ["sk-proj-" + "A1b2C3d4" * 6, "sk-proj-" + "Z9y8X7w6" * 6]


def test_redact_full_cut_and_masked_forms() -> None:
    used, other = KEYS
    body = (f"key {other}; cut {used[:14]}; masked sk-proj-{'*' * 30}{used[-4:]}; dotted sk-...{used[-4:]}").encode()
    out = redact(body, KEYS, used)
    for k in KEYS:
        assert k.encode() not in out and k[-4:].encode() not in out and k[8:16].encode() not in out
    assert out.count(b"***") >= 4
    assert redact(b'{"error": "bad model"}', KEYS, used) == b'{"error": "bad model"}'


@pytest.mark.parametrize("code", [400, 404, 422])
async def test_client_never_sees_an_upstream_key_in_an_error(relay_factory: RelayFactory, upstream: Upstream, code: int) -> None:
    relay = await relay_factory(channels=[{"name": "fake", "type": "openai", "base_url": upstream.url,
                                           "keys": KEYS[:1], "models": ["demo"]}])
    echo = {"error": {"message": f"Incorrect request for key {KEYS[0]} (sk-proj-****{KEYS[0][-4:]})",
                      "type": "invalid_request_error", "param": None, "code": None}}
    upstream.script[KEYS[0]] = [status(code, body=echo)]
    async with aiohttp.ClientSession() as http:
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(relay.v1 + "/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as resp:
            raw = await resp.read()
            assert resp.status == code
    assert KEYS[0].encode() not in raw and KEYS[0][-4:].encode() not in raw
    assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"  # the rest of the body is the upstream's
