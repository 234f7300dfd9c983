"""Prices, the worst case a request may cost, and what it actually cost. Pure.

Before a request is forwarded, its worst-case cost is reserved against the key's balance (relay.balances);
when it ends, the real cost is charged, never more than was reserved: so no number of concurrent requests
can take a key below zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import BillingConfig, PriceConfig
from .endpoints import ENDPOINTS
from .errors import PermissionDenied
from .types import ReasoningTable, RelayRequest, Usage

__all__ = ["Pricing", "output_limit"]

_FREE = PriceConfig(free=True)
# Speech uploads carry no duration the relay can read; 128 kbit/s (16 kB/s) is the common encoding.
_UPLOAD_BYTES_PER_SECOND = 16_000
# The prompt estimate is raised by this much when reserving, so tokenizer differences do not undershoot.
_PROMPT_MARGIN = 1.25


class Pricing:
    def __init__(
        self, prices: Mapping[str, PriceConfig], cfg: BillingConfig, reasoning: ReasoningTable | None = None
    ) -> None:
        self._prices = prices
        self._cfg = cfg
        self._reasoning = reasoning or ReasoningTable()

    def price(self, model: str, endpoint: str | None = None) -> PriceConfig:
        ep = ENDPOINTS.get(endpoint) if endpoint is not None else None
        if ep is not None and ep.pricing == "none":
            return _FREE
        p = self._prices.get(model)
        if p is not None:
            return p
        if not self._cfg.require_prices:
            return _FREE
        raise PermissionDenied(
            f"The model '{model}' has no price configured, so it cannot be billed.", code="model_not_priced"
        )

    def multiplier(self, group: str) -> float:
        return self._cfg.groups.get(group, 1.0)

    def worst_case(self, price: PriceConfig, req: RelayRequest, prompt_tokens: int) -> float:
        """The most this request can cost before the group multiplier."""
        fixed = self._fixed_cost(price, req)
        if fixed is not None:
            return fixed
        body: Mapping[str, Any] = req.json or {}
        # the whole prompt may be written to a prompt cache, which can cost more than input (Anthropic: 1.25x)
        per_prompt_token = max(price.input, price.cache_write or 0.0)
        prompt = prompt_tokens * _PROMPT_MARGIN * per_prompt_token / 1e6
        fields = _output_fields(req)
        if not fields:
            return prompt
        limit = _int(next((v for f in fields if (v := _field(body, f)) is not None), None), self._cfg.max_output_tokens)
        effort = body.get("reasoning_effort")
        if isinstance(effort, str) and effort != "none":
            # Claude's max_tokens is raised by the thinking budget when it is not above it (relay.adapters.thinking)
            budget = self._reasoning.for_model(req.model).budgets.get(effort, 0)
            limit += budget if limit <= budget else 0
        output = limit * max(1, _int(body.get("n"), 1))
        return prompt + output * price.output / 1e6

    def cost(self, price: PriceConfig, req: RelayRequest, usage: Usage) -> float:
        """What the request actually cost, before the group multiplier."""
        fixed = self._fixed_cost(price, req)
        if fixed is not None:
            return fixed
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        cached_price = price.input if price.cached_input is None else price.cached_input
        write_price = price.input if price.cache_write is None else price.cache_write
        return (
            (usage.prompt_tokens - cached - written) * price.input
            + cached * cached_price
            + written * write_price
            + usage.completion_tokens * price.output
        ) / 1e6

    def _fixed_cost(self, price: PriceConfig, req: RelayRequest) -> float | None:
        """The cost of requests priced by what they ask for, not by tokens: known before they run."""
        ep = ENDPOINTS.get(req.endpoint)
        if price.free or (ep is not None and ep.pricing == "none"):
            return 0.0
        if price.per_request:
            return price.per_request
        body: Mapping[str, Any] = req.json or {}
        pricing = ep.pricing if ep is not None else "tokens"
        if pricing == "images":
            return _int(body.get("n"), 1) * _image_price(price, body)
        if pricing == "speech":
            text = body.get("input")
            return len(text) * price.characters / 1e6 if isinstance(text, str) else 0.0
        if pricing == "upload" or req.form:
            return self._upload_minutes(req) * price.minute
        return None

    @staticmethod
    def _upload_minutes(req: RelayRequest) -> float:
        size = 0
        for f in req.form:
            if f.spool is not None:
                f.spool.seek(0, 2)
                size += f.spool.tell()
        return size / _UPLOAD_BYTES_PER_SECOND / 60


def _output_fields(req: RelayRequest) -> tuple[str, ...]:
    ep = ENDPOINTS.get(req.endpoint)
    return ep.output_fields if ep is not None else ("max_completion_tokens", "max_tokens")


def output_limit(req: RelayRequest, default: int) -> int:
    """The output tokens the request may produce: its own cap (the endpoint's field), else `default`;
    0 for endpoints with no output tokens."""
    fields = _output_fields(req)
    if not fields:
        return 0
    body: Mapping[str, Any] = req.json or {}
    return _int(next((v for f in fields if (v := _field(body, f)) is not None), None), default)


def _field(body: Mapping[str, Any], name: str) -> Any:
    """A body field; a dotted name reaches into nested objects (Gemini's generationConfig.maxOutputTokens)."""
    if "." not in name:
        return body.get(name)
    value: Any = body
    for part in name.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _image_price(price: PriceConfig, body: Mapping[str, Any]) -> float:
    size, quality = body.get("size"), body.get("quality")
    for name in (f"{size}/{quality}", str(size)):
        if name in price.images:
            return price.images[name]
    return price.image
