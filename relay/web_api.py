"""Client endpoints (/v1/... and the same without /v1): parse the body once, authenticate, hand to the proxy.

The routes come from the endpoint table (relay.endpoints). Everything a client can get wrong is answered
here, in OpenAI's error shape (Anthropic's on /v1/messages, whose route marks the request with its DIALECT
for the app's middleware), before any upstream is contacted: a missing or bad key, a body too large,
malformed or mistyped JSON, an unknown model, a model no channel serves at this endpoint, a response id
that is not the key's own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .access_log import ACCESS, AccessNote
from .auth import KeyResolver, authenticate, check_key, key_allows
from .bindings import ResponseBindings
from .config import Config
from .endpoints import ENDPOINTS, Endpoint
from .errors import InvalidRequest, NotFound, PermissionDenied, RelayError, UpstreamUnavailable
from .ledger import Ledger
from .proxy import Proxy
from .router import Router
from .types import FormField, KeyRecord, RelayRequest
from .web_input import (
    MAX_MODEL_CHARS,
    check_model_name,
    close_form,
    image_form,
    parse_json,
    read_body,
    read_form,
    validate,
    validate_messages,
)
from .web_models import Alternate, add_model_routes

__all__ = ["DIALECT", "REQUEST_ID", "ApiDeps", "add_routes"]

# Set on every request by the app's middleware (a typed key: aiohttp warns on plain string keys).
REQUEST_ID = web.RequestKey("request_id", str)
# The client's dialect, set by a route whose errors are not OpenAI's (/v1/messages): the app's middleware
# renders errors in it.
DIALECT = web.RequestKey("dialect", str)
# Client headers /v1/messages forwards to an Anthropic upstream as they are.
_ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
# Calls on a stored response: the endpoint entry, the HTTP method, the path after responses/{id}.
_STORED = (("responses/retrieve", "GET", ""), ("responses/delete", "DELETE", ""),
           ("responses/cancel", "POST", "/cancel"), ("responses/input_items", "GET", "/input_items"))


class ApiDeps:
    """What the client endpoints need, fixed at startup."""

    def __init__(
        self, cfg: Config, keys: KeyResolver, router: Router, proxy: Proxy, ledger: Ledger,
        bindings: ResponseBindings,
    ) -> None:
        self.cfg = cfg
        self.keys = keys
        self.router = router
        self.proxy = proxy
        self.ledger = ledger
        self.bindings = bindings


def _key(deps: ApiDeps, request: web.Request) -> KeyRecord:
    key = authenticate(deps.keys, request.headers)
    request[ACCESS] = AccessNote(key.prefix, end_reason="rejected")  # the proxy's note replaces it if relayed
    check_key(key, request.remote, deps.keys.networks_of(key.id))
    return key


def add_routes(app: web.Application, deps: ApiDeps, models_alternate: Alternate | None = None) -> None:
    for prefix in ("/v1", ""):
        for ep in ENDPOINTS.values():
            if ep.dialect == "openai" and ep.family == ep.name:
                app.router.add_post(f"{prefix}/{ep.name}", _relay_handler(deps, ep))
        for name, method, suffix in _STORED:
            app.router.add_route(
                method, f"{prefix}/responses/{{id}}{suffix}", _stored_response_handler(deps, ENDPOINTS[name], suffix)
            )
    app.router.add_post("/v2/rerank", _relay_handler(deps, ENDPOINTS["rerank"]))  # Cohere's path
    add_model_routes(app, deps.router, deps.cfg, lambda request: _key(deps, request), models_alternate)
    app.router.add_post("/v1/messages", _messages_handler(deps))
    app.router.add_post("/v1/messages/count_tokens", _messages_handler(deps, "messages/count_tokens"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _relay_handler(deps: ApiDeps, ep: Endpoint) -> Handler:
    is_form = ep.body == "form"
    file_param = "image" if ep.images else "file"  # the upload's file field, named in errors
    endpoint = ep.name

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        key = _key(deps, request)
        if deps.ledger.full:
            raise UpstreamUnavailable("The relay is overloaded; retry shortly.", code="relay_overloaded")
        form: tuple[FormField, ...] = ()
        model = ""
        relayed = False
        try:
            data: dict[str, Any] | None
            if is_form and request.content_type == "multipart/form-data":
                form = await read_form(request, deps.cfg.server.max_upload_bytes, deps.cfg.server.read_timeout,
                                       file_param)
                fields = {f.name: f.value for f in form if f.spool is None}
                model = fields.get("model", b"").decode("utf-8", "replace")[: MAX_MODEL_CHARS + 1]
                check_model_name(model)
                stream = fields.get("stream", b"").lower() == b"true"
                body, data, wants_usage = b"", None, False
                if ep.images:  # edits, variations: billed and limited by the images asked for
                    form, model, data = image_form(endpoint, form)
            elif is_form:
                raise InvalidRequest("This endpoint takes a multipart/form-data upload.", param=file_param)
            else:
                body = await read_body(request, deps.cfg.server.max_body_bytes, deps.cfg.server.read_timeout)
                data = parse_json(body)
                model, stream, wants_usage = validate(endpoint, data)
            if not model:
                raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
            _check_model(deps, key, model, ep)
            pin = await _pinned_by(deps, key, data) if data is not None and ep.family == "responses" else None
            req = RelayRequest(
                id=request[REQUEST_ID], endpoint=endpoint, model=model, body=body, json=data,
                stream=stream, wants_usage=wants_usage, key=key, started=started, form=form,
                content_type=request.content_type, query=request.query_string, pin=pin,
                sticky=_affinity(key, model, data),
            )
            relayed = True
            return await deps.proxy.relay(request, req)
        except RelayError as e:
            if not relayed:
                deps.proxy.record_rejected(request[REQUEST_ID], key.id, endpoint, model, e.status, started, request.remote)
            raise
        finally:
            close_form(list(form))

    return handle


def _check_model(deps: ApiDeps, key: KeyRecord, model: str, ep: Endpoint) -> None:
    if not deps.router.serves(model):
        message = (f"model: {model} does not exist or you do not have access to it." if ep.dialect == "anthropic"
                   else f"The model '{model}' does not exist or you do not have access to it.")
        raise NotFound(message, param="model")
    if not key_allows(key, model):
        raise PermissionDenied(f"This key is not allowed to use the model '{model}'.", code="model_not_allowed")
    if not deps.router.serves(model, ep):
        raise InvalidRequest(
            f"The model '{model}' is not served at /v1/{ep.name} by any channel of this relay.",
            param="model", code="unsupported_endpoint",
        )


async def _binding(deps: ApiDeps, key: KeyRecord, response_id: str) -> str | None:
    """The account uid that holds the key's response `response_id` (None: not the key's, or unknown)."""
    try:
        got = await deps.bindings.lookup(response_id)
    except Exception:  # noqa: BLE001 - the shared backend is down: the account cannot be found now
        raise UpstreamUnavailable(
            "The relay cannot look up which upstream account holds this response right now; retry shortly.",
            code="binding_unavailable", headers={"Retry-After": "1"},
        ) from None
    if got is None or got[1] != key.id:
        return None  # another key's response is as unknown to this key as one that never existed
    return got[0]


async def _pinned_by(deps: ApiDeps, key: KeyRecord, data: Mapping[str, Any]) -> str | None:
    prev = data.get("previous_response_id")
    if prev is None:
        return None
    if not isinstance(prev, str) or not prev:
        raise InvalidRequest("'previous_response_id' must be a string.", param="previous_response_id",
                             code="invalid_type")
    uid = await _binding(deps, key, prev)
    if uid is None:
        raise NotFound(f"Previous response with id '{prev}' not found.", param="previous_response_id",
                       code="previous_response_not_found")
    return uid


def _affinity(key: KeyRecord, model: str, data: Mapping[str, Any] | None) -> str | None:
    """The value that keeps requests on one account (upstream prompt caches are per account), if any."""
    if not data:
        return None
    value = data.get("prompt_cache_key") or data.get("safety_identifier") or data.get("user")
    if not value:
        meta = data.get("metadata")
        value = meta.get("user_id") if isinstance(meta, Mapping) else None
    if not isinstance(value, str) or not value or len(value) > 512:
        return None
    return f"{key.id}\0{model}\0{value}"


def _stored_response_handler(deps: ApiDeps, ep: Endpoint, suffix: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        key = _key(deps, request)
        response_id = request.match_info["id"]
        try:
            uid = await _binding(deps, key, response_id)
            if uid is None:
                raise NotFound(f"No response found with id '{response_id}'.", param="response_id")
        except RelayError as e:
            deps.proxy.record_rejected(request[REQUEST_ID], key.id, ep.name, "", e.status, started, request.remote)
            raise
        await request.read()  # a cancel's body, if any: the upstream takes none
        req = RelayRequest(
            id=request[REQUEST_ID], endpoint=ep.name, model="", body=b"", json=None,
            stream=request.query.get("stream") == "true", wants_usage=False, key=key, started=started,
            query=request.query_string, method=request.method, path=f"responses/{response_id}{suffix}", pin=uid,
        )
        resp = await deps.proxy.relay(request, req)
        if ep.name == "responses/delete" and resp.status == 200:
            try:
                await deps.bindings.forget(response_id)
            except Exception:  # noqa: BLE001 - it expires on its own; the upstream no longer has it anyway
                pass
        return resp

    return handle


def _messages_handler(deps: ApiDeps, endpoint: str = "messages") -> Handler:
    """Anthropic's Messages API (and its token count): the same pipeline, errors in Anthropic's shape (see the
    app's middleware)."""
    ep = ENDPOINTS[endpoint]
    counting = endpoint == "messages/count_tokens"

    async def handle(request: web.Request) -> web.StreamResponse:
        request[DIALECT] = "anthropic"
        started = time.monotonic()
        key = _key(deps, request)
        if deps.ledger.full:
            raise UpstreamUnavailable("The relay is overloaded; retry shortly.", code="relay_overloaded")
        model = ""
        try:
            body = await read_body(request, deps.cfg.server.max_body_bytes, deps.cfg.server.read_timeout)
            data = parse_json(body)
            model = validate_messages(data, max_tokens=not counting)
            _check_model(deps, key, model, ep)
        except RelayError as e:
            deps.proxy.record_rejected(request[REQUEST_ID], key.id, ep.name, model, e.status, started, request.remote)
            raise
        headers = {h: v for h in _ANTHROPIC_HEADERS if (v := request.headers.get(h))}
        req = RelayRequest(
            id=request[REQUEST_ID], endpoint=ep.name, model=model, body=body, json=data,
            stream=data.get("stream") is True and not counting, wants_usage=True, key=key, started=started,
            dialect="anthropic", headers=headers, sticky=_affinity(key, model, data),
            query=request.query_string if counting else "",
        )
        return await deps.proxy.relay(request, req)

    return handle
