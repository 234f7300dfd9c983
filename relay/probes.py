"""Health probes, the pure part: the request that proves an account, and the reading of its answer.

Every channel type gets the same probe: a chat completion of one output token (`max_tokens: 1`, a
two-letter prompt) for the channel's `test_model`, built by the channel's own chat adapter, so it goes out
exactly as client traffic would (URL, auth header, api-version, model map). Not `GET /models`: OpenAI
answers that for an account whose credit is gone (insufficient_quota shows only on a generation), and
Anthropic and Azure model lists do not exercise the deployment at all. One probe costs ~10 input tokens and
1 output token: at the default interval (60 s) about 16,000 tokens a day per account.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson

from .adapters import adapter_for
from .config import ChannelConfig
from .errors import UpstreamFailure
from .health import ProbeResult, quota_failure
from .types import KeyRecord, RelayRequest, Target, UpstreamRequest, with_egress

__all__ = ["PROBE_KEY", "probe_failure", "probe_request", "probe_result"]

PROBE_KEY = KeyRecord("probe", "health probe", "", "")
_BODY = {"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "stream": False}


def probe_request(channel: ChannelConfig, target: Target) -> UpstreamRequest:
    """The probe for one account (`target`, with its key) of `channel`."""
    model = channel.test_model or channel.models[0]
    body = {"model": model, **_BODY}
    req = RelayRequest(
        id="probe", endpoint="chat/completions", model=model, body=orjson.dumps(body), json=body, stream=False,
        wants_usage=False, key=PROBE_KEY, started=time.monotonic(),
    )
    return with_egress(adapter_for(channel.type, "chat/completions").build_request(req, target), target)


def probe_failure(
    channel_type: str, status: int, headers: Mapping[str, str], body: bytes, keywords: tuple[bytes, ...],
) -> UpstreamFailure | None:
    """None for a passing answer (2xx); else the failure as the adapter reads it, "quota" when the body names
    a spent quota (relay.health.quota_failure)."""
    if 200 <= status < 300:
        return None
    failure = adapter_for(channel_type, "chat/completions").parse_error(status, headers, body)
    return quota_failure(failure, keywords)


def probe_result(
    channel: ChannelConfig, index: int, uid: str, status: int | None, failure: UpstreamFailure | None,
    latency: float,
) -> ProbeResult:
    """`failure` None: passed. The error is the status and the upstream's error code or type, never its
    message (OpenAI's 401 message quotes the start and end of the key)."""
    model = channel.test_model or channel.models[0]
    ms = round(latency * 1000, 1)
    if failure is None:
        return ProbeResult(channel.name, index, uid, model, True, "ok", status, ms, "", time.time())
    kind = "bad_request" if failure.kind == "client" else failure.kind
    if kind in ("connect", "timeout"):
        status, error = None, failure.reason
    else:
        error = f"HTTP {failure.status}" + (f" {code}" if (code := _code(failure.body)) else "")
    return ProbeResult(channel.name, index, uid, model, False, kind, status, ms, error, time.time())


def _code(body: bytes) -> str:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return ""
    for field in ("code", "type", "status"):
        value = err.get(field)
        if isinstance(value, str) and value and len(value) <= 64 and value.replace("_", "").isalnum():
            return value
    return ""
