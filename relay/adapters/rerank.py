"""Rerank on `openai` channels: Jina's API shape, which most rerank services share (Jina, SiliconFlow,
vLLM, Xinference, Cohere's v2 but for its meta), passed through untouched but for the model name.

    POST {base_url}/rerank   (or the channel's `rerank_path`: a path after base_url, or a whole URL)
    {"model", "query", "documents": [str | {"text"}], "top_n", "return_documents"}
    -> {"results": [{"index", "relevance_score", "document"?}], "usage": {"total_tokens"}}

Usage is read from Jina's `usage` (total_tokens, or prompt_tokens), else Cohere's and SiliconFlow's `meta`
(`billed_units.input_tokens`, `tokens.input_tokens`); a rerank has no output tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..types import RelayRequest, Target, UpstreamRequest, Usage
from .openai import OpenAIAdapter

__all__ = ["RerankAdapter", "usage_from_rerank"]

# Bodies up to this are parsed whole for their usage; a larger one (documents returned) has its tail
# parsed: Jina and Cohere put usage / meta after the results.
_PARSE_WHOLE = 256 * 1024


def rerank_url(target: Target) -> str:
    path = target.rerank_path
    if path is None:
        return f"{target.base_url}/rerank"
    return path if path.startswith(("http://", "https://")) else target.base_url + path


def usage_from_rerank(obj: Mapping[str, Any]) -> Usage | None:
    usage = obj.get("usage")
    if isinstance(usage, Mapping):
        total = usage.get("total_tokens", usage.get("prompt_tokens"))
        if isinstance(total, int) and not isinstance(total, bool):
            return Usage(total, 0, "upstream")
    meta = obj.get("meta")
    if isinstance(meta, Mapping):
        for part in ("billed_units", "tokens"):
            units = meta.get(part)
            tokens = units.get("input_tokens") if isinstance(units, Mapping) else None
            if isinstance(tokens, (int, float)) and not isinstance(tokens, bool):
                return Usage(int(tokens), 0, "upstream")
    return None


def _usage_of(body: bytes) -> Usage | None:
    if len(body) > _PARSE_WHOLE:
        # the usage object (or meta) comes last: parse from its key on, as a one-member object
        for key in (b'"usage"', b'"meta"'):
            i = body.rfind(key)
            if i > 0:
                try:
                    tail = orjson.loads(b"{" + body[i:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(tail, dict) and (found := usage_from_rerank(tail)) is not None:
                    return found
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return usage_from_rerank(obj) if isinstance(obj, dict) else None


class RerankAdapter(OpenAIAdapter):
    def build_request(self, req: RelayRequest, target: Target) -> UpstreamRequest:
        inner = super().build_request(req, target)
        url = rerank_url(target)
        if req.query:
            url += ("&" if "?" in url else "?") + req.query
        return UpstreamRequest(inner.method, url, inner.headers, inner.body)

    def parse_response(self, req: RelayRequest, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        return body, _usage_of(body)
