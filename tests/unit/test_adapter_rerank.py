"""Rerank on openai channels: where the request goes (rerank_path) and the usage read from Jina's, Cohere's
and SiliconFlow's answers, small or large."""

from __future__ import annotations

import orjson

from relay.adapters import adapter_for
from relay.types import KeyRecord, RelayRequest, Target

BODY = {"model": "rr", "query": "q", "documents": ["a", "b"]}


def request() -> RelayRequest:
    return RelayRequest(id="r", endpoint="rerank", model="rr", body=orjson.dumps(BODY), json=BODY, stream=False,
                        wants_usage=False, key=KeyRecord("k", "", "", ""), started=0.0)


def target(base: str = "https://api.jina.ai/v1", path: str | None = None) -> Target:
    return Target("c", "openai", base, 0, "sk-up", "rr-up", rerank_path=path)


def test_the_url_is_base_url_rerank_or_the_channels_rerank_path() -> None:
    adapter = adapter_for("openai", "rerank")
    got = adapter.build_request(request(), target())
    assert got.url == "https://api.jina.ai/v1/rerank"
    assert orjson.loads(got.body) == {**BODY, "model": "rr-up"}  # type: ignore[arg-type]
    assert got.headers["Authorization"] == "Bearer sk-up"
    assert adapter.build_request(request(), target("https://h", "/v1/rerank")).url == "https://h/v1/rerank"
    assert adapter.build_request(request(), target("https://h", "https://other/x/rerank")).url == "https://other/x/rerank"


def test_usage_from_jina_cohere_and_siliconflow_answers() -> None:
    adapter = adapter_for("openai", "rerank")
    results = [{"index": 0, "relevance_score": 0.9}]
    answers = [
        ({"model": "m", "usage": {"total_tokens": 42}, "results": results}, 42),
        ({"usage": {"prompt_tokens": 7}, "results": results}, 7),
        ({"id": "x", "results": results, "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1, "input_tokens": 30}}}, 30),
        ({"id": "x", "results": results, "meta": {"tokens": {"input_tokens": 12, "output_tokens": 0}}}, 12),
    ]
    for answer, tokens in answers:
        body = orjson.dumps(answer)
        out, usage = adapter.parse_response(request(), 200, body)
        assert out == body and usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.source) == (tokens, 0, "upstream")
    _, usage = adapter.parse_response(request(), 200, orjson.dumps({"id": "x", "results": results, "meta": {"billed_units": {"search_units": 1}}}))
    assert usage is None  # search units only: priced per request, the prompt is estimated


def test_usage_after_a_large_documents_list() -> None:
    adapter = adapter_for("openai", "rerank")
    docs = [{"index": i, "relevance_score": 0.5, "document": {"text": "usage " * 100}} for i in range(1000)]
    body = orjson.dumps({"model": "m", "results": docs, "usage": {"total_tokens": 99}})
    assert len(body) > 256 * 1024
    _, usage = adapter.parse_response(request(), 200, body)
    assert usage is not None and usage.prompt_tokens == 99
