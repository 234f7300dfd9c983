"""Image edits and variations: multipart uploads spooled to disk, forwarded part for part (byte-compared at
the fake), billed per image, limited by the key's ipm; a 25 MB upload does not grow the relay's memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from bench.fake_upstream import PNG
from relay.auth import new_secret
from relay.config import hash_key
from relay.store import Store
from relay.types import KeyRecord
from tests.conftest import ACCOUNTS, CLIENT_KEY, RelayFactory, Upstream, wait_ledger
from tests.procs import auth

PRICES = {"gpt-image-1": {"image": 0.04, "images": {"1024x1024/high": 0.17}}, "dall-e-2": {"image": 0.02}}


def channels(upstream: Upstream) -> list[dict[str, Any]]:
    return [{"name": "img", "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS),
             "models": ["gpt-image-1", "dall-e-2"]}]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_edit_with_two_images_and_a_mask_reaches_the_upstream_intact(
    relay_factory: RelayFactory, upstream: Upstream,
) -> None:
    relay = await relay_factory(channels=channels(upstream), prices=PRICES)
    one, two, mask = PNG + os.urandom(3000), PNG + os.urandom(2_000_000), PNG + b"\x00" * 100  # one spooled to disk
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=20)
    async with client:
        answer = await client.images.edit(
            model="gpt-image-1", image=[("one.png", one, "image/png"), ("two.png", two, "image/png")],
            mask=("mask.png", mask, "image/png"), prompt="Add a hat", n=2, size="1024x1024", quality="high",
            input_fidelity="high", background="opaque", output_format="png",
        )
    assert answer.data is not None and len(answer.data) == 2
    got = upstream.records[-1]
    assert got.path == "/v1/images/edits"
    files = [(p["name"], p["filename"], p["content_type"], p["sha256"], p["size"]) for p in got.parts if "sha256" in p]
    assert files == [
        ("image[]", "one.png", "image/png", sha(one), len(one)),
        ("image[]", "two.png", "image/png", sha(two), len(two)),
        ("mask", "mask.png", "image/png", sha(mask), len(mask)),
    ]
    assert got.fields == {"model": "gpt-image-1", "prompt": "Add a hat", "n": "2", "size": "1024x1024",
                          "quality": "high", "input_fidelity": "high", "background": "opaque", "output_format": "png"}
    rows = await wait_ledger(relay.database, 1)
    assert (rows[0]["endpoint"], rows[0]["status"]) == ("images/edits", 200)
    assert rows[0]["cost_usd"] == pytest.approx(2 * 0.17)  # two images at the size/quality price


async def test_a_variation_without_a_model_is_dall_e_2(relay_factory: RelayFactory, upstream: Upstream) -> None:
    relay = await relay_factory(channels=channels(upstream), prices=PRICES)
    image = PNG + os.urandom(500)
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=20)
    async with client:
        with pytest.warns(DeprecationWarning):  # the SDK marks variations (dall-e-2 only) deprecated
            answer = await client.images.create_variation(image=("cat.png", image, "image/png"), n=3,
                                                          response_format="url")
    assert answer.data is not None and len(answer.data) == 3
    got = upstream.records[-1]
    assert got.path == "/v1/images/variations" and got.fields["model"] == "dall-e-2"
    assert [(p["name"], p["sha256"]) for p in got.parts if "sha256" in p] == [("image", sha(image))]
    rows = await wait_ledger(relay.database, 1)
    assert rows[0]["model"] == "dall-e-2" and rows[0]["cost_usd"] == pytest.approx(3 * 0.02)


async def test_bad_uploads_are_refused_before_the_upstream(relay_factory: RelayFactory, upstream: Upstream) -> None:
    relay = await relay_factory(channels=channels(upstream), prices=PRICES)

    def form(images: int, **fields: str) -> aiohttp.FormData:
        data = aiohttp.FormData(default_to_multipart="note" not in fields)
        for k, v in fields.items():
            data.add_field(k, v)
        for i in range(images):
            data.add_field("image[]", PNG, filename=f"{i}.png", content_type="image/png")
        return data

    cases = [
        ("images/edits", form(0, prompt="x", model="gpt-image-1", note="no file"), 400, "image"),
        ("images/edits", form(0, prompt="x", model="gpt-image-1"), 400, "image"),
        ("images/edits", form(17, prompt="x", model="gpt-image-1"), 400, "image"),
        ("images/edits", form(1, model="gpt-image-1"), 400, "prompt"),
        ("images/edits", form(1, prompt="x", model="gpt-image-1", n="11"), 400, "n"),
        ("images/variations", form(2), 400, "image"),
    ]
    async with aiohttp.ClientSession() as http:
        for path, data, status, param in cases:
            async with http.post(f"{relay.v1}/{path}", data=data, headers=auth(CLIENT_KEY)) as resp:
                body = await resp.json()
                assert resp.status == status and body["error"]["param"] == param, body
    assert upstream.records == []


async def test_edits_count_images_against_the_keys_ipm(relay_factory: RelayFactory, upstream: Upstream) -> None:
    relay = await relay_factory(channels=channels(upstream), prices=PRICES)
    store = Store(relay.database)
    await store.open()
    secret = new_secret()
    await store.create_key(KeyRecord(id="key_" + uuid.uuid4().hex[:12], name="img", key_hash=hash_key(secret),
                                     prefix=secret[:7], ipm=3))
    await store.close()
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=secret, max_retries=0, timeout=20)
    async with client:
        for _ in range(100):
            try:
                await client.images.edit(model="gpt-image-1", image=("a.png", PNG), prompt="x", n=2)
                break
            except openai.AuthenticationError:
                await asyncio.sleep(0.02)  # until the relay's key cache has the new key
        with pytest.raises(openai.RateLimitError) as e:
            await client.images.edit(model="gpt-image-1", image=("a.png", PNG), prompt="x", n=2)
        assert e.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("endpoint", ["images/edits", "images/variations"])
async def test_a_25_mb_upload_is_streamed_not_held(
    relay_factory: RelayFactory, upstream: Upstream, tmp_path: Path, endpoint: str,
) -> None:
    relay = await relay_factory(channels=channels(upstream), prices=PRICES, server={"max_upload_bytes": 30 * 2**20})
    big = tmp_path / "big.png"
    digest = hashlib.sha256()
    with big.open("wb") as f:
        for _ in range(25 * 16):  # 25 MB in 64 KiB pieces, never held whole here either
            piece = os.urandom(65536)
            digest.update(piece)
            f.write(piece)

    async def upload(http: aiohttp.ClientSession) -> None:
        data = aiohttp.FormData()
        data.add_field("model", "dall-e-2")
        if endpoint == "images/edits":
            data.add_field("prompt", "bigger")
        with big.open("rb") as f:
            data.add_field("image", f, filename="big.png", content_type="image/png")
            async with http.post(f"{relay.v1}/{endpoint}", data=data, headers=auth(CLIENT_KEY)) as resp:
                assert resp.status == 200, await resp.text()

    async with aiohttp.ClientSession() as http:
        await upload(http)  # warm: connections, code paths
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            await upload(http)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # client, relay and fake all in this process: every one of them streamed the 25 MB
    assert peak - before < 4 * 2**20, f"{(peak - before) / 2**20:.1f} MB held during a 25 MB upload"
    got = upstream.records[-1]
    assert got.files["image"]["sha256"] == digest.hexdigest() and got.files["image"]["size"] == 25 * 2**20
