"""Client endpoints (/v1/... and the same without /v1): parse the body once, authenticate, hand to the proxy.

Everything a client can get wrong is answered here, in OpenAI's error shape (Anthropic's on /v1/messages, whose
route marks the request with its DIALECT for the app's middleware), before any upstream is
contacted: a missing or bad key, a body too large, malformed or mistyped JSON, an unknown model.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .auth import KeyResolver, authenticate, check_key, key_allows
from .config import Config
from .errors import InvalidRequest, NotFound, PayloadTooLarge, PermissionDenied, RelayError, UpstreamUnavailable
from .ledger import Ledger
from .proxy import Proxy
from .router import Router
from .types import FormField, KeyRecord, RelayRequest

__all__ = ["DIALECT", "REQUEST_ID", "ApiDeps", "add_routes"]

# Endpoints relayed with a JSON body, and those taking a multipart upload.
JSON_ENDPOINTS = (
    "chat/completions", "completions", "embeddings", "images/generations", "audio/speech", "moderations",
)
FORM_ENDPOINTS = ("audio/transcriptions", "audio/translations")
_MAX_FORM_FIELD = 64 * 1024  # a non-file multipart field (model, prompt, language...)
_SPOOL_IN_MEMORY = 1024 * 1024  # an upload is kept in memory up to this, then on disk
_MODELS_CREATED = int(time.time())
# Set on every request by the app's middleware (a typed key: aiohttp warns on plain string keys).
REQUEST_ID = web.RequestKey("request_id", str)
# The client's dialect, set by a route whose errors are not OpenAI's (/v1/messages): the app's middleware
# renders errors in it.
DIALECT = web.RequestKey("dialect", str)
# Client headers /v1/messages forwards to an Anthropic upstream as they are.
_ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")


class ApiDeps:
    """What the client endpoints need, fixed at startup."""

    def __init__(self, cfg: Config, keys: KeyResolver, router: Router, proxy: Proxy, ledger: Ledger) -> None:
        self.cfg = cfg
        self.keys = keys
        self.router = router
        self.proxy = proxy
        self.ledger = ledger
        self.owned_by = {m: ch.type for ch in reversed(cfg.channels) for m in ch.models}


def _key(deps: ApiDeps, request: web.Request) -> KeyRecord:
    key = authenticate(deps.keys, request.headers)
    check_key(key, request.remote, deps.keys.networks_of(key.id))
    return key


def add_routes(app: web.Application, deps: ApiDeps) -> None:
    for prefix in ("/v1", ""):
        for endpoint in JSON_ENDPOINTS + FORM_ENDPOINTS:
            app.router.add_post(f"{prefix}/{endpoint}", _relay_handler(deps, endpoint))
        app.router.add_get(f"{prefix}/models", _models_handler(deps))
        app.router.add_get(f"{prefix}/models/{{model:.+}}", _model_handler(deps))
    app.router.add_post("/v1/messages", _messages_handler(deps))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _relay_handler(deps: ApiDeps, endpoint: str) -> Handler:
    is_form = endpoint in FORM_ENDPOINTS

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        key = _key(deps, request)
        if deps.ledger.full:
            raise UpstreamUnavailable("The relay is overloaded; retry shortly.", code="relay_overloaded")
        form: tuple[FormField, ...] = ()
        model = ""
        relayed = False
        try:
            if is_form and request.content_type == "multipart/form-data":
                form = await _read_form(request, deps.cfg.server.max_upload_bytes, deps.cfg.server.read_timeout)
                fields = {f.name: f.value for f in form if f.spool is None}
                model = fields.get("model", b"").decode("utf-8", "replace")
                stream = fields.get("stream", b"").lower() == b"true"
                body, data, wants_usage = b"", None, False
            elif is_form:
                raise InvalidRequest("This endpoint takes a multipart/form-data upload.", param="file")
            else:
                body = await _read_body(request, deps.cfg.server.max_body_bytes, deps.cfg.server.read_timeout)
                data = _parse_json(body)
                model, stream, wants_usage = _validate(endpoint, data)
            if not model:
                raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
            if not deps.router.serves(model):
                raise NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
            if not key_allows(key, model):
                raise PermissionDenied(f"This key is not allowed to use the model '{model}'.", code="model_not_allowed")
            req = RelayRequest(
                id=request[REQUEST_ID], endpoint=endpoint, model=model, body=body, json=data,
                stream=stream, wants_usage=wants_usage, key=key, started=started, form=form,
                content_type=request.content_type, query=request.query_string,
            )
            relayed = True
            return await deps.proxy.relay(request, req)
        except RelayError as e:
            if not relayed:
                deps.proxy.record_rejected(request[REQUEST_ID], key.id, endpoint, model, e.status, started)
            raise
        finally:
            for f in form:
                if f.spool is not None:
                    f.spool.close()

    return handle


def _messages_handler(deps: ApiDeps) -> Handler:
    """Anthropic's Messages API: the same pipeline, errors in Anthropic's shape (see the app's middleware)."""
    endpoint = "messages"

    async def handle(request: web.Request) -> web.StreamResponse:
        request[DIALECT] = "anthropic"
        started = time.monotonic()
        key = _key(deps, request)
        if deps.ledger.full:
            raise UpstreamUnavailable("The relay is overloaded; retry shortly.", code="relay_overloaded")
        model = ""
        try:
            body = await _read_body(request, deps.cfg.server.max_body_bytes, deps.cfg.server.read_timeout)
            data = _parse_json(body)
            model = _validate_messages(data)
            if not deps.router.serves(model):
                raise NotFound(f"model: {model} does not exist or you do not have access to it.", param="model")
            if not key_allows(key, model):
                raise PermissionDenied(f"This key is not allowed to use the model '{model}'.", code="model_not_allowed")
        except RelayError as e:
            deps.proxy.record_rejected(request[REQUEST_ID], key.id, endpoint, model, e.status, started)
            raise
        headers = {h: v for h in _ANTHROPIC_HEADERS if (v := request.headers.get(h))}
        req = RelayRequest(
            id=request[REQUEST_ID], endpoint=endpoint, model=model, body=body, json=data,
            stream=data.get("stream") is True, wants_usage=True, key=key, started=started, dialect="anthropic",
            headers=headers,
        )
        return await deps.proxy.relay(request, req)

    return handle


def _validate_messages(data: dict[str, Any]) -> str:
    """The fields of a Messages request the relay itself reads or the API always requires."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a non-empty string).", param="model")
    max_tokens = data.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Field required (an integer of at least 1).", param="max_tokens")
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages: Field required (an array of message objects).", param="messages")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean.", param="stream")
    return model


def _models_handler(deps: ApiDeps) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        key = _key(deps, request)
        data = [_model_object(deps, m) for m in deps.router.models() if key_allows(key, m)]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    return handle


def _model_handler(deps: ApiDeps) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        key = _key(deps, request)
        model = request.match_info["model"]
        if not deps.router.serves(model) or not key_allows(key, model):
            raise NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        return web.json_response(_model_object(deps, model), dumps=_dumps)

    return handle


def _model_object(deps: ApiDeps, model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": deps.owned_by.get(model, "relay")}


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, refusing one over `limit` without reading it (Content-Length) or past it (chunked)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {limit} bytes.")
    if length is not None and request.content.is_eof():
        return await request.read()  # already all here (the usual small request): no deadline to arm
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for piece in request.content.iter_any():
                size += len(piece)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                parts.append(piece)
    except TimeoutError:
        raise RelayError("The request body was not received in time.", status=408, code="request_timeout") from None
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; a JSON object is required.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        text = str(e)
        if "recursion" in text.lower():
            msg = "The request body is nested too deeply."
        elif "utf-8" in text.lower() or "surrogates" in text.lower():
            msg = "The request body is not valid UTF-8."
        else:
            msg = f"The request body is not valid JSON ({text.split(':', 1)[0]})."
        raise InvalidRequest(msg, code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def _validate(endpoint: str, data: dict[str, Any]) -> tuple[str, bool, bool]:
    """Check the fields the relay itself reads; everything else passes through untouched."""
    model = data.get("model")
    if model is None or model == "":
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string.", param="model", code="invalid_type")
    stream = data.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = data.get("stream_options")
    wants_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options", code="invalid_type")
        include = options.get("include_usage")
        if include is not None and not isinstance(include, bool):
            raise InvalidRequest(
                "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage",
                code="invalid_type",
            )
        wants_usage = bool(include)
    if endpoint == "chat/completions":
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array.", param="messages", code="invalid_type")
        if not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("Each message must be an object.", param="messages", code="invalid_type")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidRequest(f"'{name}' must be a non-negative integer.", param=name, code="invalid_type")
    return model, stream, wants_usage


async def _read_form(request: web.Request, limit: int, timeout: float) -> tuple[FormField, ...]:
    """Read a multipart upload: small fields in memory, file parts spooled (to disk past 1 MiB)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Upload is {length} bytes; the limit is {limit} bytes.")
    fields: list[FormField] = []
    total = 0
    try:
        async with asyncio.timeout(timeout):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or not part.name:
                    raise InvalidRequest("Nested or unnamed multipart parts are not supported.")
                if part.filename is None:
                    value = await part.read(decode=False)
                    total += len(value)
                    if len(value) > _MAX_FORM_FIELD:
                        raise PayloadTooLarge(f"Form field '{part.name}' is too large.")
                    fields.append(FormField(part.name, bytes(value)))
                    continue
                spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=os.environ.get("RELAY_SPOOL_DIR"))
                fields.append(FormField(part.name, b"", part.filename, part.headers.get("Content-Type"), spool))
                while piece := await part.read_chunk(65536):
                    total += len(piece)
                    if total > limit:
                        raise PayloadTooLarge(f"Upload exceeds the limit of {limit} bytes.")
                    spool.write(piece)
    except TimeoutError:
        _close(fields)
        raise RelayError("The upload was not received in time.", status=408, code="request_timeout") from None
    except (ValueError, AssertionError):
        _close(fields)
        raise InvalidRequest("The multipart body is malformed.") from None
    except BaseException:
        _close(fields)
        raise
    if not any(f.spool is not None for f in fields):
        _close(fields)
        raise InvalidRequest("The upload has no file part.", param="file", code="missing_required_parameter")
    return tuple(fields)


def _close(fields: list[FormField]) -> None:
    for f in fields:
        if f.spool is not None:
            f.spool.close()
