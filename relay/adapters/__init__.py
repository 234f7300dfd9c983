"""Provider adapters, one module per upstream dialect.

`adapter_for(channel_type, dialect)` picks one by the channel's type and the client's dialect: OpenAI
clients (every /v1/... endpoint but one) or Anthropic clients (/v1/messages).
"""

from __future__ import annotations

from .anthropic import AnthropicAdapter
from .anthropic_native import AnthropicNative
from .azure import AzureAdapter
from .base import Adapter, StreamHandler
from .gemini import GeminiAdapter
from .messages_openai import MessagesOverChat
from .openai import OpenAIAdapter

__all__ = ["Adapter", "StreamHandler", "adapter_for"]

_ADAPTERS: dict[tuple[str, str], Adapter] = {
    ("openai", "openai"): OpenAIAdapter(),
    ("azure", "openai"): AzureAdapter(),
    ("anthropic", "openai"): AnthropicAdapter(),
    ("gemini", "openai"): GeminiAdapter(),
    ("anthropic", "anthropic"): AnthropicNative(),
    ("openai", "anthropic"): MessagesOverChat(OpenAIAdapter()),
    ("azure", "anthropic"): MessagesOverChat(AzureAdapter()),
}


def adapter_for(channel_type: str, dialect: str = "openai") -> Adapter:
    try:
        return _ADAPTERS[channel_type, dialect]
    except KeyError:
        if dialect != "openai" and (channel_type, "openai") in _ADAPTERS:
            raise LookupError(f"channel type {channel_type!r} does not serve {dialect} clients yet") from None
        raise LookupError(f"channel type {channel_type!r} is not supported yet") from None
