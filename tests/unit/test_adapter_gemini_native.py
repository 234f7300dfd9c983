"""The Gemini-native routes to gemini channels: requests passed through, streams forwarded unparsed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.adapters import adapter_for
from relay.adapters.gemini_native import GeminiNative, GeminiPassthrough
from relay.errors import RelayError, google_error_body, render_error, stream_error_event
from relay.types import KeyRecord, RelayRequest, Target

DATA = Path(__file__).resolve().parent.parent / "data"
TARGET = Target("gem", "gemini", "https://generativelanguage.googleapis.com/v1beta", 0, "gk-secret", "gemini-2.5-flash")
ADAPTER = GeminiNative()
BODY = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def req(endpoint: str = "gemini/generateContent", body: Any = None, stream: bool = False, query: str = "",
        model: str = "gemini-2.5-flash", raw: bytes | None = None) -> RelayRequest:
    body = BODY if body is None else body
    return RelayRequest(
        id="r1", endpoint=endpoint, model=model, body=raw if raw is not None else orjson.dumps(body), json=body,
        stream=stream, wants_usage=True, key=KeyRecord("k", "t", "h", "sk-AbCd"), started=0.0, dialect="gemini",
        query=query,
    )


def test_registered() -> None:
    assert isinstance(adapter_for("gemini", "gemini/generateContent"), GeminiNative)
    assert isinstance(adapter_for("gemini", "gemini/batchEmbedContents"), GeminiNative)


URL_CASES = [
    ("generate", req(), TARGET, "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"),
    ("stream without alt: alt=sse upstream", req(stream=True),
     TARGET, "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ("client's key never goes upstream, other params do", req(stream=True, query="alt=sse&key=sk-client&$fields=x"),
     TARGET,
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?%24fields=x&alt=sse"),
    ("mapped model", req("gemini/countTokens"), Target("g", "gemini", "https://g.example", 0, "k", "gemini-2.0-pro"),
     "https://g.example/v1beta/models/gemini-2.0-pro:countTokens"),
    ("tuned model", req(model="tunedModels/abc"), Target("g", "gemini", "https://g.example/v1", 0, "k", "tunedModels/abc"),
     "https://g.example/v1beta/tunedModels/abc:generateContent"),
]


@pytest.mark.parametrize("name, r, target, url", URL_CASES, ids=[c[0] for c in URL_CASES])
def test_urls(name: str, r: RelayRequest, target: Target, url: str) -> None:
    up = ADAPTER.build_request(r, target)
    assert up.url == url and up.method == "POST"
    assert up.headers["x-goog-api-key"] == target.api_key
    assert "sk-client" not in up.url and "Authorization" not in up.headers


def test_body_bytes_untouched_even_when_the_model_is_mapped() -> None:
    raw = b'{"contents":  [{"parts": [{"text": "Hi"}]}], "safetySettings": []}'
    r = req(body=orjson.loads(raw), raw=raw, model="public-name")
    assert ADAPTER.build_request(r, TARGET).body is raw


def test_batch_embed_names_the_upstream_model_when_mapped() -> None:
    body = {"requests": [{"model": "models/public", "content": {"parts": [{"text": "a"}]}}]}
    r = req("gemini/batchEmbedContents", body, model="public")
    up = ADAPTER.build_request(r, Target("g", "gemini", "https://g.example", 0, "k", "text-embedding-004"))
    assert orjson.loads(up.body)["requests"][0]["model"] == "models/text-embedding-004"  # type: ignore[arg-type]


USAGE_CASES = [
    ("generate: thoughts are output, cached is cached",
     "gemini/generateContent", {"candidates": [], "usageMetadata": {
         "promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "cachedContentTokenCount": 4}},
     (10, 12, 4, "upstream")),
    ("countTokens: not billed", "gemini/countTokens", {"totalTokens": 31}, (0, 0, 0, "upstream")),
    ("embed: the text counted", "gemini/embedContent", {"embedding": {"values": [0.1]}}, (7, 0, 0, "estimate")),
]


@pytest.mark.parametrize("name, endpoint, answer, expected", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_responses_pass_through_with_usage(name: str, endpoint: str, answer: Any, expected: tuple[Any, ...]) -> None:
    body = orjson.dumps(answer)
    r = req(endpoint, {"content": {"parts": [{"text": "Hi"}]}} if "embed" in endpoint else BODY)
    out, usage = ADAPTER.parse_response(r, 200, body)
    assert out is body
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.source) == expected


# -- streams -------------------------------------------------------------------------------------------------

STREAMS = ["gemini_stream_text.sse", "gemini_stream_tools.sse"]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_bytes_unchanged_split_at_every_offset(name: str) -> None:
    data = (DATA / name).read_bytes()
    for cut in range(len(data) + 1):
        h = GeminiPassthrough("gemini-2.5-flash")
        out = h.feed(data[:cut]) + h.feed(data[cut:]) + h.close()
        assert out == data, cut
        assert h.done, cut
        assert h.usage is not None and h.usage.source == "upstream"
    last = orjson.loads(data.rstrip().rsplit(b"\n", 1)[-1][6:])["usageMetadata"]
    assert h.usage.prompt_tokens == last["promptTokenCount"]
    assert h.usage.completion_tokens == last["candidatesTokenCount"] + last.get("thoughtsTokenCount", 0)


def test_stream_as_json_array_split_at_every_offset() -> None:
    data = (DATA / "gemini_stream_text.sse").read_bytes()
    expected = (DATA / "gemini_stream_text.json").read_bytes()
    for cut in range(len(data) + 1):
        h = GeminiPassthrough("gemini-2.5-flash", array=True)
        out = h.feed(data[:cut]) + h.feed(data[cut:]) + h.close()
        assert out == expected, cut
        assert h.done and h.headers is not None and h.headers["Content-Type"].startswith("application/json")
    assert [e["responseId"] for e in orjson.loads(expected)] == ["mLJ5aO2xJ4W1nvgP0sOa8QM"] * 3


def test_stream_without_finish_reason_is_cut() -> None:
    data = (DATA / "gemini_stream_text.sse").read_bytes()
    cut = data.replace(b',"finishReason":"STOP"', b"")
    assert cut != data
    h = GeminiPassthrough()
    h.feed(cut)
    h.close()
    assert not h.done
    err = h.error_frame("The upstream stream ended before it finished.", "upstream_error")
    assert err.startswith(b"data: ") and err.endswith(b"\r\n\r\n")
    assert orjson.loads(err[6:])["error"] == {
        "code": 500, "message": "The upstream stream ended before it finished.", "status": "INTERNAL"}


def test_stream_waits_for_every_candidate_asked_for() -> None:
    one = b'data: {"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"STOP","index":0}]}\r\n\r\n'
    two = b'data: {"candidates":[{"content":{"parts":[{"text":"b"}]},"finishReason":"STOP","index":1}]}\r\n\r\n'
    h = GeminiPassthrough(candidates=2)
    h.feed(one)
    assert not h.done
    h.feed(two)
    assert h.done


def test_json_array_error_closes_the_array() -> None:
    h = GeminiPassthrough(array=True)
    first = h.feed(b'data: {"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0}]}\r\n\r\n')
    body = first + h.error_frame("stalled", "upstream_error")
    assert orjson.loads(body)[-1]["error"]["status"] == "INTERNAL"
    assert orjson.loads(GeminiPassthrough(array=True).error_frame("x", "y"))[0]["error"]["message"] == "x"


def test_upstream_errors_reach_the_client_as_they_are() -> None:
    body = orjson.dumps({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",
                                   "details": [{"reason": "API_KEY_INVALID"}]}})
    failure = ADAPTER.parse_error(400, {"content-type": "application/json"}, body)
    assert failure.body is body and failure.kind == "auth"  # the account's key, not the request: fail over
    failure = ADAPTER.parse_error(400, {}, orjson.dumps({"error": {"code": 400, "message": "bad", "status": "X"}}))
    assert failure.kind == "client" and failure.status == 400


# -- Google's error shape ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, name", [
    (400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"), (404, "NOT_FOUND"),
    (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (502, "INTERNAL"), (503, "UNAVAILABLE"),
    (504, "DEADLINE_EXCEEDED"),
])
def test_google_error_shape(status: int, name: str) -> None:
    resp = render_error(RelayError("Nope.", status=status), "gemini")
    assert resp.status == status
    assert orjson.loads(resp.body) == {"error": {"code": status, "message": "Nope.", "status": name}}  # type: ignore[arg-type]
    assert orjson.loads(google_error_body(status, "x"))["error"]["status"] == name
    assert orjson.loads(stream_error_event("cut", dialect="gemini")[6:])["error"]["status"] == "INTERNAL"


def test_upstream_error_event_is_the_only_error() -> None:
    h = GeminiPassthrough()
    err = b'data: {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}\r\n\r\n'
    out = h.feed(b'data: {"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0}]}\r\n\r\n' + err)
    assert out.endswith(err) and not h.done
    assert h.error_frame("ended before it finished", "upstream_error") == b""
