"""The Responses API passed through to openai/azure channels: events out byte for byte, usage from the
terminal event only, the response id from the first, a clean end only on the protocol's terminal event.
Fed a recorded stream (tests/data/responses_text.sse, checked against the openai SDK's event types) split
at every byte offset."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import TypeAdapter

from relay.adapters import adapter_for
from relay.adapters.responses_native import AzureResponsesNative, ResponsesNative, ResponsesPassthrough
from relay.types import KeyRecord, RelayRequest, Target

DATA = Path(__file__).resolve().parents[1] / "data"
STREAM = (DATA / "responses_text.sse").read_bytes()
RID = "resp_0123456789abcdef0123456789abcdef"


def feed(h: ResponsesPassthrough, data: bytes, cut: int) -> bytes:
    return h.feed(data[:cut]) + h.feed(data[cut:]) + h.close()


def test_the_stream_passes_through_unchanged_split_anywhere() -> None:
    for cut in range(len(STREAM) + 1):
        h = ResponsesPassthrough("gpt-4o-mini")
        assert feed(h, STREAM, cut) == STREAM
        assert h.done
        assert h.usage is not None and (h.usage.prompt_tokens, h.usage.completion_tokens) == (12, 5)
        assert h.usage.cached_tokens == 4 and h.usage.source == "upstream"
        assert h.response_id == RID


def test_terminal_text_inside_an_event_is_not_the_end() -> None:
    """A delta reads "event: response.completed": the stream is cut right after it, so it did not finish."""
    cut = STREAM.index(b" is only text")
    head = STREAM[: STREAM.index(b"\n\n", cut) + 2]
    h = ResponsesPassthrough()
    assert h.feed(head) + h.close() == head
    assert not h.done and h.usage is None
    # what was delivered is counted when no usage came: the deltas' text
    assert h.completion.tokens("gpt-4o-mini") > 0


def test_the_error_frame_continues_the_sequence_and_makes_the_sdk_raise() -> None:
    from openai.types.responses import ResponseStreamEvent

    head = STREAM[: STREAM.index(b"event: response.output_text.done")]
    h = ResponsesPassthrough()
    h.feed(head)
    frame = h.error_frame("The upstream stream broke off before it finished.", "upstream_error")
    assert frame.startswith(b"event: error\ndata: ")
    data = orjson.loads(frame.split(b"data: ", 1)[1])
    last = max(int(x) for x in __import__("re").findall(rb'"sequence_number":(\d+)', head))
    assert data["sequence_number"] == last + 1
    assert data["error"]["message"] == data["message"]  # the SDK raises APIError on a top-level "error"
    event = TypeAdapter(ResponseStreamEvent).validate_python(data)
    assert event.type == "error"


def test_store_false_keeps_no_binding() -> None:
    req = request({"model": "m", "input": "hi", "store": False, "stream": True})
    h = ResponsesNative().stream_handler(req)
    h.feed(STREAM)
    assert h.response_id is None
    assert ResponsesNative().state_id(req, b'{"id": "resp_x1"}') is None
    assert ResponsesNative().state_id(request({"model": "m", "input": "hi"}), b'{"id": "resp_x1", "a": 1}') == "resp_x1"


def request(body: dict[str, object], **kw: object) -> RelayRequest:
    return RelayRequest(
        id="r", endpoint=str(kw.pop("endpoint", "responses")), model="m", body=orjson.dumps(body), json=body,
        stream=bool(body.get("stream")), wants_usage=False, key=KeyRecord("k", "k", "h", "p"), started=0.0,
        **kw,  # type: ignore[arg-type]
    )


TARGET = Target(channel="c", channel_type="openai", base_url="https://api.example/v1", account=0, api_key="sk-up",
                upstream_model="gpt-4o-mini-2024-07-18")


def test_the_body_goes_through_but_for_the_model_name() -> None:
    req = request({"model": "m", "input": "hi", "stream": True, "include": ["reasoning.encrypted_content"]})
    up = adapter_for("openai", "responses").build_request(req, TARGET)
    assert up.method == "POST" and up.url == "https://api.example/v1/responses"
    assert orjson.loads(up.body) == {**req.json, "model": "gpt-4o-mini-2024-07-18"}  # type: ignore[arg-type]
    assert "stream_options" not in orjson.loads(up.body)  # type: ignore[arg-type]  # Responses streams carry usage


@pytest.mark.parametrize(("endpoint", "method", "path"), [
    ("responses/retrieve", "GET", "responses/resp_1"), ("responses/delete", "DELETE", "responses/resp_1"),
    ("responses/cancel", "POST", "responses/resp_1/cancel"), ("responses/input_items", "GET", "responses/resp_1/input_items"),
])
def test_calls_on_a_stored_response_keep_their_method_and_path(endpoint: str, method: str, path: str) -> None:
    req = RelayRequest(id="r", endpoint=endpoint, model="", body=b"", json=None, stream=False, wants_usage=False,
                       key=KeyRecord("k", "k", "h", "p"), started=0.0, method=method, path=path, query="limit=5")
    up = adapter_for("openai", endpoint).build_request(req, TARGET)
    assert (up.method, up.url, up.body) == (method, f"https://api.example/v1/{path}?limit=5", None)
    assert up.headers["Authorization"] == "Bearer sk-up"
    _body, usage = adapter_for("openai", endpoint).parse_response(req, 200, b'{"id":"resp_1","usage":{"input_tokens":9}}')
    assert usage is None  # never billed again


def test_azure_responses_use_the_resource_url_and_the_deployment_as_model() -> None:
    target = Target(channel="az", channel_type="azure", base_url="https://res.openai.azure.com", account=0,
                    api_key="az-key", upstream_model="my-deployment", api_version="2025-04-01-preview")
    adapter = adapter_for("azure", "responses")
    assert isinstance(adapter, AzureResponsesNative)
    up = adapter.build_request(request({"model": "m", "input": "hi"}), target)
    assert up.url == "https://res.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
    assert up.headers["api-key"] == "az-key" and "Authorization" not in up.headers
    assert orjson.loads(up.body)["model"] == "my-deployment"  # type: ignore[arg-type]
