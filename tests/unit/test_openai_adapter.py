"""The OpenAI passthrough: bytes untouched, usage read, the usage-only chunk removed unless asked for."""

from __future__ import annotations

import time

import orjson
import pytest

from relay.adapters.base import extract_usage_object, retry_after_seconds
from relay.adapters.openai import OpenAIAdapter, OpenAIPassthrough
from relay.types import KeyRecord, RelayRequest, Target

CHUNKS = [
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n',
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}\n\n',
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"lo"}}],"usage":null}\n\n',
    b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n',
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}\n\n',
    b"data: [DONE]\n\n",
]
STREAM = b"".join(CHUNKS)
WITHOUT_USAGE_CHUNK = b"".join(CHUNKS[:4] + CHUNKS[5:])


def run(handler: OpenAIPassthrough, cuts: list[int]) -> bytes:
    out, prev = [], 0
    for c in [*cuts, len(STREAM)]:
        out.append(handler.feed(STREAM[prev:c]))
        prev = c
    out.append(handler.close())
    return b"".join(out)


@pytest.mark.parametrize("cut", range(0, len(STREAM), 7))
def test_usage_chunk_removed_when_not_asked(cut: int) -> None:
    h = OpenAIPassthrough(keep_usage_chunk=False)
    assert run(h, [cut]) == WITHOUT_USAGE_CHUNK
    assert h.usage is not None and (h.usage.prompt_tokens, h.usage.completion_tokens) == (11, 2)
    assert h.usage.source == "upstream"
    assert h.done


@pytest.mark.parametrize("cut", range(0, len(STREAM), 7))
def test_stream_untouched_when_usage_asked(cut: int) -> None:
    h = OpenAIPassthrough(keep_usage_chunk=True)
    assert run(h, [cut]) == STREAM
    assert h.usage is not None and h.usage.total_tokens == 13


def test_truncated_stream_is_not_done() -> None:
    h = OpenAIPassthrough(keep_usage_chunk=False)
    h.feed(b"".join(CHUNKS[:3]))
    assert not h.done and h.usage is None


def req(body: dict[str, object], **kw: object) -> RelayRequest:
    raw = orjson.dumps(body)
    fields: dict[str, object] = dict(
        id="r1", endpoint="chat/completions", model=str(body["model"]), body=raw, json=body,
        stream=bool(body.get("stream")), wants_usage=False, key=KeyRecord("k", "k", "h", "sk-"), started=0.0,
    )
    fields.update(kw)
    return RelayRequest(**fields)  # type: ignore[arg-type]


def target(upstream_model: str = "gpt-4o") -> Target:
    return Target("ch", "openai", "https://up.example/v1", 0, "up-key", upstream_model)


def test_body_bytes_untouched_when_nothing_changes() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x_unknown": {"deep": [1.5]}}
    r = req(body)
    u = OpenAIAdapter().build_request(r, target())
    assert u.body is r.body
    assert u.url == "https://up.example/v1/chat/completions"
    assert u.headers["Authorization"] == "Bearer up-key"


def test_model_mapped_and_usage_requested_on_streams() -> None:
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"x": 1}, "messages": [], "extra": True}
    u = OpenAIAdapter().build_request(req(body), target("gpt-4o-2024-08-06"))
    assert isinstance(u.body, bytes)
    sent = orjson.loads(u.body)
    assert sent["model"] == "gpt-4o-2024-08-06"
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    assert sent["extra"] is True


def test_extract_usage_object_reads_only_the_usage() -> None:
    body = b'{"data":[{"embedding":"AAAA"}],"usage":{"prompt_tokens":5,"total_tokens":5,"d":{"x":1}}}'
    assert extract_usage_object(body) == {"prompt_tokens": 5, "total_tokens": 5, "d": {"x": 1}}
    assert extract_usage_object(b'{"usage": null}') is None
    assert extract_usage_object(b'{"x":1}') is None


def test_extract_usage_object_from_a_large_body_reads_only_the_usage() -> None:
    vectors = [{"embedding": [0.125] * 2000, "index": i} for i in range(40)]
    usage = {"prompt_tokens": 9, "total_tokens": 9, "details": {"cached": {"n": 0}}}
    body = orjson.dumps({"data": vectors, "usage": usage, "model": "m"})
    assert len(body) > 256 * 1024
    assert extract_usage_object(body) == usage
    assert extract_usage_object(body.replace(b'"usage":{', b'"usage": {')) == usage
    assert extract_usage_object(body[: body.rfind(b"}", 0, len(body) - 20)]) is None


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    from email.utils import formatdate

    later = retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert later is not None and 25 < later <= 30
    assert retry_after_seconds({}) is None

