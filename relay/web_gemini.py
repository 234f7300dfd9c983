"""The Gemini-native client routes (Gemini CLI, the google-genai SDK, Google-provider chat apps):

    POST /v1beta/models/{model}:generateContent | :streamGenerateContent[?alt=sse] | :countTokens
                                | :embedContent | :batchEmbedContents
    GET  /v1beta/models, /v1beta/models/{model}

The POST routes are also reached under /v1 (/v1/models/{model}:method), where the google-genai SDK calls them
by default. GET /v1/models and /v1/models/{model} stay OpenAI's, but for a request that carries Google's
marks (`x-goog-api-key`, `?key=` or the SDKs' `x-goog-api-client` header, and no OpenAI key header), which
gets Gemini's list,
and a model may be named as Google's URLs name it, `tunedModels/{name}` included. The key comes in
`x-goog-api-key`, `?key=` or `Authorization: Bearer`; the query's key is read for authentication only (no
log, ledger row or upstream URL holds it). Every error on these routes is in Google's shape (the route
marks the request with its DIALECT for the app's middleware).

A token count for a model no gemini channel serves is made here, with the relay's tokenizer on the request
as its chat translation would send it: not relayed, not billed, counted against the key's request limits.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from aiohttp import web

from .access_log import ACCESS, AccessNote
from .adapters.gemini_request import camel_keys, to_chat_request
from .auth import authenticate, check_key, extract_google_key, key_allows
from .endpoints import ENDPOINTS, Endpoint
from .errors import InvalidRequest, NotFound, PermissionDenied, RelayError, UpstreamUnavailable
from .tokens import prompt_tokens
from .types import KeyRecord, RelayRequest
from .web_api import DIALECT, REQUEST_ID, ApiDeps
from .web_input import check_model_name, parse_json, read_body

__all__ = ["add_gemini_routes", "google_models"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The method after the colon -> the endpoint entry serving it.
_METHODS = {
    "generateContent": "gemini/generateContent", "streamGenerateContent": "gemini/generateContent",
    "countTokens": "gemini/countTokens", "embedContent": "gemini/embedContent",
    "batchEmbedContents": "gemini/batchEmbedContents",
}
_CHAT_METHODS = ["generateContent", "countTokens", "streamGenerateContent"]
_EMBED_METHODS = ["embedContent", "batchEmbedContents"]
_PAGE_SIZE, _MAX_PAGE_SIZE = 50, 1000  # Google's default and largest pageSize for models.list


def add_gemini_routes(app: web.Application, deps: ApiDeps) -> None:
    action = _action_handler(deps)
    for prefix in ("/v1beta", "/v1"):
        app.router.add_post(prefix + "/models/{name}", action)
        app.router.add_post(prefix + "/tunedModels/{name}", action)
    app.router.add_get("/v1beta/models", _list_handler(deps))
    app.router.add_get("/v1beta/models/{name}", _get_handler(deps))

    async def unknown(request: web.Request) -> web.StreamResponse:
        request[DIALECT] = "gemini"
        raise NotFound(f"The path {request.path} is not part of this API.")

    app.router.add_route("*", "/v1beta/{tail:.*}", unknown)


def google_models(deps: ApiDeps) -> Callable[[web.Request], Awaitable[web.StreamResponse] | None]:
    """Gemini's model list and model for GET /v1/models[/{model}] when a Google client asks (else None)."""
    list_, get = _list_handler(deps), _get_handler(deps)

    def pick(request: web.Request) -> Awaitable[web.StreamResponse] | None:
        headers = request.headers
        google = "x-goog-api-key" in headers or "key" in request.query or "x-goog-api-client" in headers
        if not google or "Authorization" in headers or "x-api-key" in headers:
            return None
        return get(request) if request.match_info.get("model") else list_(request)

    return pick


def _key(deps: ApiDeps, request: web.Request) -> KeyRecord:
    key = authenticate(deps.keys, request.headers, extract_google_key(request.headers, request.query))
    request[ACCESS] = AccessNote(key.prefix, end_reason="rejected")  # the proxy's note replaces it if relayed
    check_key(key, request.remote, deps.keys.networks_of(key.id))
    return key


def _without_key(query: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "key"])


def _action_handler(deps: ApiDeps) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        request[DIALECT] = "gemini"
        started = time.monotonic()
        key = _key(deps, request)
        tuned = "/tunedModels/" in request.path
        name, _, method = request.match_info["name"].rpartition(":")
        endpoint = _METHODS.get(method)
        if not name or endpoint is None:
            raise NotFound(f"Method not found: {request.match_info['name']!r} names no model method of this API.")
        model = check_model_name(("tunedModels/" if tuned else "") + name)
        ep = ENDPOINTS[endpoint]
        if deps.ledger.full:
            raise UpstreamUnavailable("The relay is overloaded; retry shortly.", code="relay_overloaded")
        try:
            body = await read_body(request, deps.cfg.server.max_body_bytes, deps.cfg.server.read_timeout)
            data = camel_keys(parse_json(body))  # Google's JSON takes snake_case names too
            _validate(method, data)
            local = _check_model(deps, key, model, ep, method)
        except RelayError as e:
            deps.proxy.record_rejected(request[REQUEST_ID], key.id, endpoint, model, e.status, started, request.remote)
            raise
        req = RelayRequest(
            id=request[REQUEST_ID], endpoint=endpoint, model=model, body=body, json=data,
            stream=method == "streamGenerateContent", wants_usage=True, key=key, started=started,
            dialect="gemini", query=_without_key(request.query_string),
        )
        if local:
            return await deps.proxy.answer_locally(request, req, _count_locally(data, model))
        return await deps.proxy.relay(request, req)

    return handle


def _validate(method: str, data: dict[str, Any]) -> None:
    """The fields the relay itself reads or translates, checked in Google's terms."""
    if method in ("embedContent", "batchEmbedContents"):
        if method == "batchEmbedContents":
            requests = data.get("requests")
            if not isinstance(requests, list) or not requests or not all(isinstance(r, dict) for r in requests):
                raise InvalidRequest("* BatchEmbedContentsRequest.requests: requests is not specified")
        elif not isinstance(data.get("content"), dict):
            raise InvalidRequest("* EmbedContentRequest.content: content is not specified")
        return
    inner = data.get("generateContentRequest") if method == "countTokens" else None
    if isinstance(inner, dict):
        data = inner
    contents = data.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("* GenerateContentRequest.contents: contents is not specified")
    for i, c in enumerate(contents):
        if not isinstance(c, dict) or not isinstance(c.get("parts", []), list):
            raise InvalidRequest(
                f"Invalid value at 'contents[{i}]': a Content object with a 'parts' array is required.")
    config = data.get("generationConfig")
    if config is not None and not isinstance(config, dict):
        raise InvalidRequest("Invalid value at 'generation_config': a GenerationConfig object is required.")
    limit = (config or {}).get("maxOutputTokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidRequest("Invalid value at 'generation_config.max_output_tokens': a positive integer is required.")


def _check_model(deps: ApiDeps, key: KeyRecord, model: str, ep: Endpoint, method: str) -> bool:
    """Raise in Google's terms if the key cannot call `method` on `model`; True: the relay counts it itself."""
    resource = model if model.startswith("tunedModels/") else "models/" + model
    if not deps.router.serves(model):
        raise NotFound(f"{resource} is not found for API version v1beta, or is not supported for {method}.")
    if not key_allows(key, model):
        raise PermissionDenied(f"This API key is not allowed to use {resource}.", code="model_not_allowed")
    if deps.router.serves(model, ep):
        return False
    if method == "countTokens" and deps.router.serves(model, ENDPOINTS["gemini/generateContent"]):
        return True
    raise InvalidRequest(f"{resource} is not supported for {method} by any channel of this relay.",
                         code="unsupported_endpoint")


def _count_locally(data: dict[str, Any], model: str) -> bytes:
    inner = data.get("generateContentRequest")
    chat = to_chat_request(inner if isinstance(inner, dict) else data, model, stream=False)
    n = prompt_tokens("chat/completions", chat)
    return orjson.dumps({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]})


# -- models ---------------------------------------------------------------------------------------------------


def _model_object(deps: ApiDeps, model: str) -> dict[str, Any] | None:
    chat = deps.router.serves(model, ENDPOINTS["gemini/generateContent"])
    embed = deps.router.serves(model, ENDPOINTS["gemini/embedContent"])
    price = deps.cfg.prices.get(model)
    is_embedding = price is not None and bool(price.input) and not price.output and not price.free
    methods = _EMBED_METHODS if (is_embedding and embed) else _CHAT_METHODS if chat else []
    if not methods:
        return None
    name = model if model.startswith("tunedModels/") else "models/" + model
    return {"name": name, "baseModelId": model, "version": "001", "displayName": model,
            "supportedGenerationMethods": methods}


def _list_handler(deps: ApiDeps) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        request[DIALECT] = "gemini"
        key = _key(deps, request)
        try:
            size = int(request.query.get("pageSize") or _PAGE_SIZE)
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            raise InvalidRequest("pageSize and pageToken must be the values this API gave.") from None
        size = min(max(1, size), _MAX_PAGE_SIZE)
        objects = [o for m in deps.router.models() if key_allows(key, m) and (o := _model_object(deps, m))]
        page = objects[max(0, start): max(0, start) + size]
        out: dict[str, Any] = {"models": page}
        if start + size < len(objects):
            out["nextPageToken"] = str(start + size)
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    return handle


def _get_handler(deps: ApiDeps) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        request[DIALECT] = "gemini"
        key = _key(deps, request)
        model = request.match_info.get("name") or request.match_info["model"]
        obj = _model_object(deps, model) if deps.router.serves(model) and key_allows(key, model) else None
        if obj is None:
            raise NotFound(f"models/{model} is not found for API version v1beta.")
        return web.Response(body=orjson.dumps(obj), content_type="application/json")

    return handle
