"""The Azure OpenAI adapter: per-deployment URLs, api-version, the api-key header, OpenAI's bodies."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import orjson
import pytest

from relay.adapters import adapter_for
from relay.adapters.azure import DEFAULT_API_VERSION, AzureAdapter
from relay.adapters.openai import OpenAIPassthrough
from relay.types import FormField, KeyRecord, RelayRequest, Target

ENDPOINT = "https://myres.openai.azure.com"
MSGS = [{"role": "user", "content": "hi"}]


def req(payload: dict[str, object], **kw: object) -> RelayRequest:
    fields: dict[str, object] = dict(
        id="r1", endpoint="chat/completions", model=str(payload.get("model", "gpt-4o")),
        body=orjson.dumps(payload), json=payload, stream=bool(payload.get("stream")), wants_usage=False,
        key=KeyRecord("k", "k", "h", "sk-"), started=0.0,
    )
    fields.update(kw)
    return RelayRequest(**fields)  # type: ignore[arg-type]


def target(deployment: str = "my-gpt4o", headers: Mapping[str, str] | None = None) -> Target:
    return Target("az", "azure", ENDPOINT, 0, "azk-secret", deployment, dict(headers or {}))


@dataclasses.dataclass(frozen=True, slots=True)
class VersionedTarget:
    """A Target that also carries the channel's api_version (the shape the adapter reads it from)."""

    channel: str
    channel_type: str
    base_url: str
    account: int
    api_key: str
    upstream_model: str
    extra_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    api_version: str | None = None


def test_registered_as_channel_type_azure() -> None:
    assert isinstance(adapter_for("azure"), AzureAdapter)


def test_url_is_the_deployment_with_the_default_api_version() -> None:
    u = AzureAdapter().build_request(req({"model": "gpt-4o", "messages": MSGS}), target())
    assert u.method == "POST"
    assert u.url == f"{ENDPOINT}/openai/deployments/my-gpt4o/chat/completions?api-version={DEFAULT_API_VERSION}"
    assert DEFAULT_API_VERSION == "2024-10-21"


@pytest.mark.parametrize("endpoint", ["embeddings", "completions", "images/generations", "audio/speech"])
def test_every_deployment_endpoint_goes_to_the_deployment(endpoint: str) -> None:
    u = AzureAdapter().build_request(req({"model": "m", "input": "x"}, endpoint=endpoint), target("dep-1"))
    assert u.url == f"{ENDPOINT}/openai/deployments/dep-1/{endpoint}?api-version={DEFAULT_API_VERSION}"


def test_channel_api_version_is_used() -> None:
    t = VersionedTarget("az", "azure", ENDPOINT, 0, "azk", "dep", {}, "2025-01-01-preview")
    u = AzureAdapter().build_request(req({"model": "gpt-4o", "messages": MSGS}), t)  # type: ignore[arg-type]
    assert u.url.endswith("/openai/deployments/dep/chat/completions?api-version=2025-01-01-preview")
    unset = dataclasses.replace(t, api_version=None)
    u = AzureAdapter().build_request(req({"model": "gpt-4o", "messages": MSGS}), unset)  # type: ignore[arg-type]
    assert u.url.endswith(f"?api-version={DEFAULT_API_VERSION}")


def test_deployment_name_is_url_quoted_and_client_query_kept() -> None:
    r = req({"model": "gpt-4o", "messages": MSGS}, query="api-version=1999-01-01&trace=1")
    u = AzureAdapter().build_request(r, target("odd name/x"))
    assert u.url == (
        f"{ENDPOINT}/openai/deployments/odd%20name%2Fx/chat/completions?api-version={DEFAULT_API_VERSION}&trace=1"
    )


def test_auth_is_the_api_key_header_never_authorization() -> None:
    u = AzureAdapter().build_request(req({"model": "gpt-4o", "messages": MSGS}), target(headers={"x-ms-tag": "1"}))
    assert u.headers["api-key"] == "azk-secret"
    assert not any(k.lower() == "authorization" for k in u.headers)
    assert u.headers["Content-Type"] == "application/json"
    assert u.headers["x-ms-tag"] == "1"


def test_non_stream_body_is_the_clients_bytes() -> None:
    body = {"model": "gpt-4o", "messages": MSGS, "x_unknown": {"deep": [1.5]}, "temperature": 0.2}
    r = req(body)
    u = AzureAdapter().build_request(r, target("my-gpt4o"))  # a mapped deployment changes no byte
    assert u.body is r.body


def test_stream_asks_for_usage_and_keeps_the_rest() -> None:
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"x": 1}, "messages": MSGS, "extra": True}
    u = AzureAdapter().build_request(req(body), target("my-gpt4o"))
    assert isinstance(u.body, bytes)
    sent = orjson.loads(u.body)
    assert sent == {**body, "stream_options": {"x": 1, "include_usage": True}}  # model as the client sent it


def test_stream_that_asked_for_usage_is_untouched() -> None:
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "messages": MSGS}
    r = req(body, wants_usage=True)
    assert AzureAdapter().build_request(r, target()).body is r.body


async def test_multipart_upload_is_re_encoded() -> None:
    fields = (FormField("model", b"whisper-1"), FormField("file", b"RIFF....", "a.wav", "audio/wav"))
    r = req({}, endpoint="audio/transcriptions", model="whisper-1", body=b"", json=None, form=fields,
            content_type="multipart/form-data")
    u = AzureAdapter().build_request(r, target("whisper-dep"))
    assert u.url == f"{ENDPOINT}/openai/deployments/whisper-dep/audio/transcriptions?api-version={DEFAULT_API_VERSION}"
    assert u.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert u.headers["api-key"] == "azk-secret" and "Authorization" not in u.headers
    assert callable(u.body)
    sent = b"".join([piece async for piece in u.body()])
    assert b'name="model"\r\n\r\nwhisper-1\r\n' in sent
    assert b'filename="a.wav"' in sent and b"RIFF...." in sent


def test_responses_streams_and_errors_are_openais() -> None:
    a = AzureAdapter()
    r = req({"model": "gpt-4o", "messages": MSGS})
    body = b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    out, usage = a.parse_response(r, 200, body)
    assert out is body and usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 4)
    assert isinstance(a.stream_handler(r), OpenAIPassthrough)


def test_content_filter_refusal_is_a_client_error_passed_back() -> None:
    body = orjson.dumps({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            "hate": {"filtered": True, "severity": "high"}}},
    }})
    f = AzureAdapter().parse_error(400, {"content-type": "application/json"}, body)
    assert f.kind == "client" and not f.retryable
    assert f.status == 400 and f.body == body


def test_throttling_and_bad_key_keep_their_meaning() -> None:
    a = AzureAdapter()
    f = a.parse_error(429, {"retry-after": "3"}, b'{"error":{"code":"429","message":"Rate limit is exceeded."}}')
    assert f.kind == "rate_limited" and f.retry_after == 3
    assert a.parse_error(401, {}, b'{"error":{"code":"401","message":"Access denied"}}').kind == "auth"
