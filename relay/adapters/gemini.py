"""Channels of type `gemini`: Google's Gemini API (generativelanguage.googleapis.com), for OpenAI clients.

    chat/completions  -> POST {base}/v1beta/models/{model}:generateContent
                         (stream: :streamGenerateContent?alt=sse, one GenerateContentResponse per `data:`)
    embeddings        -> POST {base}/v1beta/models/{model}:batchEmbedContents

The key travels only in the `x-goog-api-key` header, never in the URL (URLs end up in access logs).

Gemini's stream has no end event: it is complete when the body ends after every candidate reported a
finishReason. A body that ends before that is a cut stream (`done` stays False, the proxy says so).

Reasoning: `reasoning_effort` becomes generationConfig.thinkingConfig (thinkingBudget, or thinkingLevel for
models that take it, with includeThoughts; see relay.adapters.thinking); `thought: true` parts come back as
`reasoning_content` (on the message and on stream deltas). A functionCall part's `thoughtSignature` rides
on its tool call as `extra_content.google.thought_signature`, as Google's own OpenAI-compatible endpoint
gives it, and goes back on that functionCall part when the client sends the tool call back (Gemini 3
refuses a function call turn without it).

JSON Schemas (tool parameters, response_format json_schema) are reduced to the OpenAPI 3.0 subset the
Gemini `Schema` object accepts: see gemini_contents.py.

The request translation is in gemini_contents.py, the answer's in gemini_response.py, the stream's in
gemini_stream.py; this module is the adapter that puts them together.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequest, UpstreamFailure
from ..tokens import prompt_tokens
from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .base import classify_status
from .gemini_contents import clean_schema, to_gemini_request
from .gemini_response import from_gemini_response, from_gemini_usage, tool_call_id
from .gemini_stream import GeminiStream

__all__ = [
    "GeminiAdapter",
    "GeminiStream",
    "clean_schema",
    "from_gemini_response",
    "from_gemini_usage",
    "to_gemini_request",
    "tool_call_id",
]


# -- URLs and embeddings ----------------------------------------------------------------------------------


def _model_path(model: str) -> str:
    return model[7:] if model.startswith("models/") else model


def _api_base(base_url: str) -> str:
    base = base_url.rstrip("/")
    for suffix in ("/v1beta", "/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest("A gemini channel embeds text only: 'input' must be a string or an array of strings.",
                         param="input")


def _floats_base64(values: list[float]) -> str:
    arr = array("f", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()


# -- the adapter --------------------------------------------------------------------------------------------


class GeminiAdapter:
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        body = req.json
        if body is None:
            raise InvalidRequest(f"A gemini channel takes JSON bodies only ({req.endpoint}).")
        model = _model_path(target.upstream_model)
        base = f"{_api_base(target.base_url)}/v1beta/models/{model}"
        headers = {**target.extra_headers, "x-goog-api-key": target.api_key, "Content-Type": "application/json"}
        if req.endpoint == "chat/completions":
            url = base + (":streamGenerateContent?alt=sse" if req.stream else ":generateContent")
            reasoning = target.reasoning.for_model(model)
            return UpstreamRequest("POST", url, headers, orjson.dumps(to_gemini_request(body, reasoning)))
        if req.endpoint == "embeddings":
            one: dict[str, Any] = {"model": f"models/{model}"}
            dims = body.get("dimensions")
            if isinstance(dims, int) and dims > 0:
                one["outputDimensionality"] = dims
            requests = [{**one, "content": {"parts": [{"text": t}]}} for t in _embedding_inputs(body.get("input"))]
            return UpstreamRequest("POST", base + ":batchEmbedContents", headers, orjson.dumps({"requests": requests}))
        raise InvalidRequest(f"The endpoint /v1/{req.endpoint} is not available for model '{req.model}'.",
                             code="unsupported_endpoint")

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, None
        if not isinstance(obj, dict):
            return body, None
        if req.endpoint == "embeddings":
            return self._embeddings(req, obj)
        out, usage = from_gemini_response(obj, req.model, req.id)
        return orjson.dumps(out), usage

    def _embeddings(self, req: RelayRequest, obj: Mapping[str, Any]) -> tuple[bytes, Usage | None]:
        as_base64 = (req.json or {}).get("encoding_format") == "base64"
        data = []
        for i, emb in enumerate(obj.get("embeddings") or ()):
            values = emb.get("values") or []
            data.append({"object": "embedding", "index": i,
                         "embedding": _floats_base64(values) if as_base64 else values})
        meta = obj.get("usageMetadata")
        if isinstance(meta, Mapping) and "promptTokenCount" in meta:
            usage = Usage(meta["promptTokenCount"], 0, "upstream")
        else:
            usage = Usage(prompt_tokens(req.endpoint, req.json), 0, "estimate")
        out = {"object": "list", "data": data, "model": req.model,
               "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}}
        return orjson.dumps(out), usage

    def stream_handler(self, req: RelayRequest) -> GeminiStream:
        return GeminiStream(req)

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        """Gemini's {"error": {"code", "message", "status", "details"}} -> a failure with an OpenAI error body."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        err = obj.get("error") if isinstance(obj, dict) else None
        err = err if isinstance(err, dict) else {}
        message = err.get("message") or body[:500].decode("utf-8", "replace") or f"upstream answered {status}"
        code = err.get("status") or None
        reasons = {d.get("reason") for d in err.get("details") or () if isinstance(d, dict)}
        retry_after = None
        for d in err.get("details") or ():
            delay = d.get("retryDelay") if isinstance(d, dict) else None
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    retry_after = float(delay[:-1])
                except ValueError:
                    pass
        if status == 429:
            type_ = "rate_limit_error"
        elif status in (401, 403) or "API_KEY_INVALID" in reasons:
            type_ = "authentication_error"
        elif status >= 500:
            type_ = "server_error"
        else:
            type_ = "invalid_request_error"
        openai_body = orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
        failure = classify_status(status, headers, openai_body, "application/json")
        if "API_KEY_INVALID" in reasons:  # Gemini answers a bad key with 400: it is the account, not the request
            failure.kind = "auth"
        if failure.retry_after is None and retry_after is not None:
            failure.retry_after = retry_after
        return failure
