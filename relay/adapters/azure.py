"""Channels of type `azure`: Azure OpenAI, OpenAI's dialect behind per-deployment URLs.

    POST {base_url}/openai/deployments/{deployment}/{endpoint}?api-version={api_version}
    api-key: <account key>

`base_url` is the resource endpoint as the AzureOpenAI SDK's `azure_endpoint` takes it
(`https://RESOURCE.openai.azure.com`); the deployment is the target's upstream model, so a channel's
`model_map` maps public model names to deployment names. `api_version` comes from the channel
(`DEFAULT_API_VERSION` when unset: the latest GA inference version, and the first GA one that accepts
`stream_options`, which the relay sets on streams to bill them).

Only the URL and the auth header differ from OpenAI: the body goes through as the client sent it (Azure
routes by deployment and ignores `model`, so it is left alone), and responses, streams and errors are
OpenAI's, handled by the OpenAI adapter. A content-filter refusal (400, code `content_filter`) is a
client error and reaches the client as Azure sent it.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from ..types import RelayRequest, Target, UpstreamRequest
from .openai import OpenAIAdapter

__all__ = ["DEFAULT_API_VERSION", "AzureAdapter"]

DEFAULT_API_VERSION = "2024-10-21"

# Endpoints served per deployment (the AzureOpenAI SDK's list); any other goes to {base_url}/openai/{endpoint}.
_DEPLOYMENT_ENDPOINTS = frozenset({
    "chat/completions", "completions", "embeddings", "audio/transcriptions", "audio/translations",
    "audio/speech", "images/generations", "images/edits",
})


class AzureAdapter(OpenAIAdapter):
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        # The OpenAI adapter builds the body (stream_options on streams, multipart re-encoded); the model
        # is kept as the client named it, since the deployment in the URL is what Azure routes by.
        as_sent = target
        if target.upstream_model != req.model and req.endpoint in _DEPLOYMENT_ENDPOINTS:
            as_sent = dataclasses.replace(target, upstream_model=req.model)
        inner = super().build_request(req, as_sent)
        headers = {"api-key": target.api_key, **target.extra_headers}
        if "Content-Type" in inner.headers:
            headers["Content-Type"] = inner.headers["Content-Type"]
        return UpstreamRequest(inner.method, _url(req, target), headers, inner.body)


def _url(req: RelayRequest, target: Target) -> str:
    # getattr: a Target without the channel's api_version (or with None) gets the default.
    version = target.api_version or DEFAULT_API_VERSION
    if req.endpoint in _DEPLOYMENT_ENDPOINTS:
        path = f"openai/deployments/{quote(target.upstream_model, safe='')}/{req.endpoint}"
    else:
        path = f"openai/{req.path or req.endpoint}"
    url = f"{target.base_url}/{path}?api-version={quote(version, safe='')}"
    if req.query:
        # the client's other query parameters go along; its own api-version (if any) never replaces ours
        rest = "&".join(p for p in req.query.split("&") if p and not p.startswith("api-version="))
        if rest:
            url += "&" + rest
    return url
