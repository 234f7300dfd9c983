"""Provider adapters, one module per upstream dialect.

`adapter_for(channel_type, endpoint, mode)` picks one for a channel type and a client endpoint (see
relay.endpoints): the endpoint's native adapter for that type, or, in mode "chat", the endpoint's
translation wrapped around the type's chat/completions adapter, or in mode "local" the relay's own answer.
"""

from __future__ import annotations

from collections.abc import Callable

from ..endpoints import ENDPOINTS, Mode
from .anthropic import AnthropicAdapter
from .anthropic_native import AnthropicNative
from .azure import AzureAdapter
from .base import Adapter, StreamHandler
from .count_tokens import AnthropicCountTokens, LocalCountTokens
from .gemini import GeminiAdapter
from .gemini_chat import GeminiOverChat
from .gemini_native import GeminiNative
from .messages_openai import MessagesOverChat
from .openai import OpenAIAdapter
from .rerank import RerankAdapter
from .responses_chat import ResponsesOverChat
from .responses_native import AzureResponsesNative, ResponsesNative

__all__ = ["Adapter", "StreamHandler", "adapter_for"]

# Each channel type's adapter for the OpenAI endpoints (chat/completions and the rest it serves).
_BASE: dict[str, Adapter] = {
    "openai": OpenAIAdapter(), "azure": AzureAdapter(), "anthropic": AnthropicAdapter(), "gemini": GeminiAdapter(),
}
# Endpoint families whose native adapter is not the type's base adapter.
_NATIVE: dict[tuple[str, str], Adapter] = {
    ("anthropic", "messages"): AnthropicNative(),
    ("openai", "responses"): ResponsesNative(),
    ("azure", "responses"): AzureResponsesNative(),
    ("openai", "rerank"): RerankAdapter(),
    ("gemini", "gemini"): GeminiNative(),
    ("anthropic", "messages/count_tokens"): AnthropicCountTokens(),
}
# Endpoint families the relay answers itself on channel types without them (mode "local").
_LOCAL: dict[str, Adapter] = {"messages/count_tokens": LocalCountTokens()}
# Endpoint families translated onto a channel's chat/completions.
_OVER_CHAT: dict[str, Callable[[Adapter], Adapter]] = {
    "messages": MessagesOverChat, "responses": ResponsesOverChat, "gemini": GeminiOverChat,
}
_MADE: dict[tuple[str, str, str], Adapter] = {}


def adapter_for(channel_type: str, endpoint: str = "chat/completions", mode: Mode | None = None) -> Adapter:
    """The adapter serving `endpoint` on a channel of `channel_type`; LookupError if there is none."""
    ep = ENDPOINTS.get(endpoint)
    family = ep.family if ep is not None else endpoint
    if mode is None:
        mode = ep.serves.get(channel_type) if ep is not None else "native"
    made = _MADE.get((channel_type, family, mode or ""))
    if made is not None:
        return made
    base = _BASE.get(channel_type)
    if base is None:
        raise LookupError(f"channel type {channel_type!r} is not supported yet")
    if mode == "native":
        adapter = _NATIVE.get((channel_type, family), base)
    elif mode == "chat" and family in _OVER_CHAT:
        adapter = _OVER_CHAT[family](base)
    elif mode == "local" and family in _LOCAL:
        adapter = _LOCAL[family]
    else:
        raise LookupError(f"channel type {channel_type!r} does not serve /v1/{endpoint}")
    _MADE[(channel_type, family, mode)] = adapter
    return adapter

