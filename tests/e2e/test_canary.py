"""Nothing secret leaks anywhere an operator or a client can look, over a run full of faults.

Canary upstream keys and a canary prompt go through a relay run at log_level: debug whose upstream
answers 400/401/404/422/429/500 with bodies that quote the key it was sent, alongside bad client keys,
bare-LF and garbage HTTP. Then the relay's log, its database file, /metrics, /status and every response
body are searched: none may hold an upstream key, and none but the client's own answers the prompt.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml

from bench.fake_upstream import status
from tests.conftest import CLIENT_KEY, Upstream
from tests.procs import Processes

UPSTREAM_KEYS = [f"sk-canary-{i}-" + secrets.token_hex(20) for i in range(3)]
PROMPT = "canary-prompt-" + secrets.token_hex(8)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def quoting(key: str, code: int) -> dict[str, object]:
    return {"error": {"message": f"Incorrect API key provided: {key}. You sent {key[:12]}...{key[-4:]}",
                      "type": "invalid_request_error", "param": None, "code": str(code)}}


async def raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()


async def test_no_secret_anywhere_after_a_fault_heavy_run(procs: Processes, upstream: Upstream, tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({
        "database": str(db), "log_level": "debug", "admin_token": "adm-" + secrets.token_hex(16),
        "client_keys": [{"name": "t", "key": CLIENT_KEY}],
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream.url, "keys": UPSTREAM_KEYS,
                      "models": ["demo"]}],
        "prices": {"demo": {"input": 1, "output": 1}},
        "retry": {"attempts": 3, "cooldown": 0.1, "max_cooldown": 0.1, "failure_cooldown": 0.1},
        "health": {"enabled": False},
    }))
    _, url = await procs.relay(config)
    bodies: list[bytes] = []
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    chat = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}]}
    async with aiohttp.ClientSession() as http:
        async def post(body: object, headers: dict[str, str] = auth, path: str = "/v1/chat/completions") -> None:
            async with http.post(url + path, json=body, headers=headers) as resp:
                bodies.append(await resp.read())

        for code in (400, 404, 422, 401, 429, 500):
            for key in UPSTREAM_KEYS:
                upstream.script[key] = [status(code, body=quoting(key, code))]
            await post(chat)
            await post({**chat, "stream": True})
            upstream.script.clear()
        await post(chat)  # a good one, and a streamed one
        await post({**chat, "stream": True})
        for bad in ("sk-wrong-" + "0" * 40, UPSTREAM_KEYS[0]):  # a bad key; an upstream key used as a client key
            await post(chat, {"Authorization": f"Bearer {bad}"})
        await post({"model": "no-such-model", "messages": chat["messages"]})
        for data in (
            b"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer " + CLIENT_KEY.encode()
            + b"\nContent-Length: 40\n\n" + PROMPT.encode(),
            b"\x16\x03\x01garbage " + PROMPT.encode() + b"\r\n\r\n",
        ):
            bodies.append(await raw(url, data))
        await asyncio.sleep(1.0)  # the ledger's flush
        for path in ("/metrics", "/status", "/healthz"):
            async with http.get(url + path) as resp:
                bodies.append(await resp.read())

    places = {"log": (tmp_path / "relay.log").read_bytes(), "metrics+status+answers": b"\n".join(bodies)}
    for f in tmp_path.iterdir():
        if f.name.startswith("relay.db"):
            places[f.name] = f.read_bytes()
    assert len(places["log"]) > 0
    for where, data in places.items():
        for key in UPSTREAM_KEYS:
            assert key.encode() not in data, f"an upstream key in {where}"
            assert key[10:30].encode() not in data, f"part of an upstream key in {where}"
        assert PROMPT.encode() not in data, f"the prompt in {where}"
    assert orjson.loads(bodies[0])["error"]["code"] == "400"  # the upstream's own answer, masked, reached the client
    assert os.path.getsize(db) > 0
