"""Provider adapters, one module per upstream dialect. `adapter_for(channel_type)` picks one."""

from __future__ import annotations

from .anthropic import AnthropicAdapter
from .azure import AzureAdapter
from .base import Adapter, StreamHandler
from .gemini import GeminiAdapter
from .openai import OpenAIAdapter

__all__ = ["Adapter", "StreamHandler", "adapter_for"]

_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "azure": AzureAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
}


def adapter_for(channel_type: str) -> Adapter:
    try:
        return _ADAPTERS[channel_type]
    except KeyError:
        raise LookupError(f"channel type {channel_type!r} is not supported yet") from None
