"""GET /v1/models and /v1/models/{id}: the models a key may use, as OpenAI lists them, plus what chat apps
of the "NewAPI" kind read to decide how to call a model (Cherry Studio, LobeChat):

- `owned_by`: the model's vendor: the channel's `vendor` option, else known from its API host (DeepSeek,
  Qwen, Moonshot, GLM ...), else from the channel type (openai, anthropic, google);
- `supported_endpoint_types`: the endpoints (relay.endpoints labels) its channels serve, narrowed by the
  model's price: a model priced per image is an image model, per character a speech model, per audio
  minute a transcription model, by input tokens alone an embedding model; any other is a chat model.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from .auth import key_allows
from .config import ChannelConfig, Config, PriceConfig
from .endpoints import ENDPOINTS, mode_for
from .errors import NotFound
from .router import Router
from .types import KeyRecord

__all__ = ["add_model_routes", "vendor_of"]

_CREATED = int(time.time())
_TYPE_VENDORS = {"openai": "openai", "azure": "openai", "anthropic": "anthropic", "gemini": "google"}
# API hosts of OpenAI-compatible vendors (a suffix of the channel's base_url host) -> vendor.
_HOST_VENDORS = {
    "openai.com": "openai", "deepseek.com": "deepseek", "aliyuncs.com": "qwen", "moonshot.cn": "moonshot",
    "moonshot.ai": "moonshot", "bigmodel.cn": "zhipu", "z.ai": "zhipu", "x.ai": "xai", "mistral.ai": "mistral",
    "groq.com": "groq", "siliconflow.cn": "siliconflow", "volces.com": "doubao",
}
# Which kind of model each endpoint is for; a model's price tells its kind.
_KIND = {
    "chat/completions": "chat", "completions": "chat", "messages": "chat", "responses": "chat",
    "embeddings": "embedding", "moderations": "moderation", "images/generations": "image", "audio/speech": "speech",
    "audio/transcriptions": "transcription", "audio/translations": "transcription", "rerank": "rerank",
    "images/edits": "image", "images/variations": "image",
    "gemini/generateContent": "chat", "gemini/embedContent": "embedding",
}


def vendor_of(ch: ChannelConfig) -> str:
    if ch.vendor:
        return ch.vendor
    host = urlsplit(ch.base_url).hostname or ""
    for suffix, vendor in _HOST_VENDORS.items():
        if host == suffix or host.endswith("." + suffix):
            return vendor
    return _TYPE_VENDORS.get(ch.type, ch.type)


def _kind(price: PriceConfig | None) -> str:
    if price is None or price.free:
        return "chat"
    if price.images or price.image:
        return "image"
    if price.characters:
        return "speech"
    if price.minute:
        return "transcription"
    if price.per_request:
        return "rerank"
    if price.input and not price.output:
        return "embedding"
    return "chat"


# Another dialect's answer on the same paths, or None: Gemini clients list models at GET /v1/models too,
# with their own key header (relay.web_gemini).
Alternate = Callable[[web.Request], Awaitable[web.StreamResponse] | None]


def add_model_routes(
    app: web.Application, router: Router, cfg: Config, authenticate: Callable[[web.Request], KeyRecord],
    alternate: Alternate | None = None,
) -> None:
    built: dict[int, dict[str, dict[str, Any]]] = {}  # router generation -> the model objects

    def models() -> dict[str, dict[str, Any]]:
        """Built once per router reload (channels changed at run time), not per request."""
        objects = built.get(router.generation)
        if objects is None:
            objects = {m: _object(m, router.channels_of(m), cfg.prices.get(m)) for m in router.models()}
            built.clear()
            built[router.generation] = objects
        return objects

    async def list_(request: web.Request) -> web.StreamResponse:
        if alternate is not None and (other := alternate(request)) is not None:
            return await other
        key = authenticate(request)
        data = [obj for m, obj in models().items() if key_allows(key, m)]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")

    async def one(request: web.Request) -> web.StreamResponse:
        if alternate is not None and (other := alternate(request)) is not None:
            return await other
        key = authenticate(request)
        model = request.match_info["model"]
        objects = models()
        if model not in objects or not key_allows(key, model):
            raise NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        return web.Response(body=orjson.dumps(objects[model]), content_type="application/json")

    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/models", list_)
        app.router.add_get(f"{prefix}/models/{{model:.+}}", one)


def _object(model: str, channels: list[ChannelConfig], price: PriceConfig | None) -> dict[str, Any]:
    kind = "rerank" if "rerank" in model.lower() else _kind(price)  # bge-reranker, jina-reranker, rerank-v3.5
    types: list[str] = []
    for ep in ENDPOINTS.values():
        if _KIND.get(ep.name) != kind or ep.label in types:  # calls on a stored response have no kind
            continue
        if any(mode_for(ep, ch) is not None for ch in channels):
            types.append(ep.label)
    return {
        "id": model, "object": "model", "created": _CREATED,
        "owned_by": vendor_of(channels[0]) if channels else "relay", "supported_endpoint_types": types,
    }
