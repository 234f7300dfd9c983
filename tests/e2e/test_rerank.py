"""Rerank (`/v1/rerank`, `/rerank`, `/v2/rerank`) through the openai SDK's raw calls and plain HTTP, against
a fake speaking Jina's format: passed through, billed per token or per request, limited and in the ledger."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx2
import openai
import orjson
import pytest

from relay.auth import new_secret
from relay.config import hash_key
from relay.store import Store
from relay.types import KeyRecord
from tests.conftest import ACCOUNTS, CLIENT_KEY, RelayFactory, Upstream, wait_ledger
from tests.procs import auth

PRICES = {
    "jina-reranker-v2": {"input": 1_000_000},  # $1 a token: the cost is the upstream's total_tokens
    "rerank-fixed": {"per_request": 0.25},
}
DOCS = ["The cat sat on the mat", {"text": "Paris is the capital of France"}, "France borders Spain"]
QUERY = "capital of France"


def channels(upstream: Upstream, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": "rr", "type": "openai", "base_url": upstream.url, "keys": list(ACCOUNTS),
             "models": ["jina-reranker-v2", "rerank-fixed"], "model_map": {"rerank-fixed": "bge-reranker-v2-m3"},
             **extra}]


async def test_rerank_through_the_openai_sdk_and_httpx_billed_and_recorded(
    relay_factory: RelayFactory, upstream: Upstream,
) -> None:
    relay = await relay_factory(channels=channels(upstream), prices=PRICES)
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    async with client:
        resp = await client.post(
            "/rerank", cast_to=httpx2.Response,
            body={"model": "jina-reranker-v2", "query": QUERY, "documents": DOCS, "top_n": 2},
        )
    assert resp.status_code == 200
    got = resp.json()
    assert [r["index"] for r in got["results"]] == [1, 2]
    assert got["results"][0]["document"] == {"text": "Paris is the capital of France"}
    assert 0 < got["results"][1]["relevance_score"] < got["results"][0]["relevance_score"] <= 1
    tokens = got["usage"]["total_tokens"]
    sent = upstream.records[-1]
    assert sent.path == "/v1/rerank" and sent.headers["Authorization"] in {f"Bearer {a}" for a in ACCOUNTS}
    assert CLIENT_KEY not in str(sent.headers)
    assert sent.json() == {"model": "jina-reranker-v2", "query": QUERY, "documents": DOCS, "top_n": 2}

    async with httpx2.AsyncClient(timeout=10) as http:
        for path in ("/v2/rerank", "/rerank"):
            r = await http.post(relay.url + path, headers=auth(CLIENT_KEY), json={
                "model": "rerank-fixed", "query": QUERY, "documents": DOCS, "return_documents": False,
            })
            assert r.status_code == 200, r.text
            assert all("document" not in x for x in r.json()["results"]) and len(r.json()["results"]) == 3
            assert upstream.records[-1].json()["model"] == "bge-reranker-v2-m3"  # model_map applies
        r = await http.get(relay.v1 + "/models", headers=auth(CLIENT_KEY))
        types = {m["id"]: m["supported_endpoint_types"] for m in r.json()["data"]}
        assert types == {"jina-reranker-v2": ["jina-rerank"], "rerank-fixed": ["jina-rerank"]}
    rows = await wait_ledger(relay.database, 3)
    assert [(r["endpoint"], r["model"], r["status"]) for r in rows] == [
        ("rerank", "jina-reranker-v2", 200), ("rerank", "rerank-fixed", 200), ("rerank", "rerank-fixed", 200),
    ]
    assert rows[0]["prompt_tokens"] == tokens and rows[0]["usage_source"] == "upstream"
    assert rows[0]["cost_usd"] == pytest.approx(tokens)  # per token
    assert [r["cost_usd"] for r in rows[1:]] == [0.25, 0.25]  # per request


async def test_rerank_path_and_bad_bodies(relay_factory: RelayFactory, upstream: Upstream) -> None:
    base = upstream.url.removesuffix("/v1")
    relay = await relay_factory(channels=channels(upstream, base_url=base, rerank_path="/v1/rerank"), prices=PRICES)
    async with httpx2.AsyncClient(timeout=10) as http:
        r = await http.post(relay.v1 + "/rerank", headers=auth(CLIENT_KEY),
                            json={"model": "jina-reranker-v2", "query": QUERY, "documents": DOCS})
        assert r.status_code == 200 and upstream.records[-1].path == "/v1/rerank"
        seen = len(upstream.records)
        for body, param in [
            ({"model": "jina-reranker-v2", "documents": DOCS}, "query"),
            ({"model": "jina-reranker-v2", "query": QUERY, "documents": []}, "documents"),
            ({"model": "jina-reranker-v2", "query": QUERY, "documents": [{"title": "no text"}]}, "documents"),
            ({"model": "jina-reranker-v2", "query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ]:
            r = await http.post(relay.v1 + "/rerank", headers=auth(CLIENT_KEY), json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert len(upstream.records) == seen  # refused before any upstream was asked


async def test_rerank_counts_against_the_keys_rate_limits(relay_factory: RelayFactory, upstream: Upstream) -> None:
    relay = await relay_factory(channels=channels(upstream), prices=PRICES)
    store = Store(relay.database)
    await store.open()
    secret = new_secret()
    await store.create_key(KeyRecord(id="key_" + uuid.uuid4().hex[:12], name="rr", key_hash=hash_key(secret),
                                     prefix=secret[:7], rpm=1))
    await store.close()
    body = {"model": "rerank-fixed", "query": QUERY, "documents": DOCS}
    async with httpx2.AsyncClient(timeout=10) as http:
        for _ in range(100):  # until the relay's key cache has the new key
            r = await http.post(relay.v1 + "/rerank", headers=auth(secret), json=body)
            if r.status_code != 401:
                break
            await asyncio.sleep(0.02)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "1"
        r = await http.post(relay.v1 + "/rerank", headers=auth(secret), json=body)
        assert r.status_code == 429 and orjson.loads(r.content)["error"]["code"] == "rate_limit_exceeded"
