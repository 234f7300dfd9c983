"""What each client endpoint is, in one table: one frozen entry per endpoint. Pure data.

An entry says how its body is read (JSON or a multipart upload), which body fields cap its output, how it
is priced, whether it counts images, its clients' dialect, and which channel types serve it: natively
(the body goes through as the client sent it) or translated onto the channel's chat/completions. The web
routes, the router (only channels that can serve the endpoint are picked), billing, limits, the adapters
and /v1/models read it from here; a new endpoint is one entry plus its adapter functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .config import ChannelConfig
from .types import Dialect

__all__ = ["ENDPOINTS", "Endpoint", "Mode", "mode_for"]

# native: as the client sent it; chat: translated onto the channel's chat/completions; local: answered by the
# relay itself without an upstream call (token counts for channels that have no counting endpoint).
Mode = Literal["native", "chat", "local"]
Pricing = Literal["tokens", "images", "speech", "upload", "none"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the path after /v1, as OpenAI names it ("chat/completions")
    serves: Mapping[str, Mode]  # channel type -> how a channel of that type serves it
    dialect: Dialect = "openai"
    body: Literal["json", "form"] = "json"
    # body fields capping output tokens, the first given wins (a dotted name is a nested field); none: no output
    output_fields: tuple[str, ...] = ()
    pricing: Pricing = "tokens"
    images: bool = False  # each image asked for (`n`) counts against the key's ipm
    stream_usage_option: bool = False  # streams report usage only when asked through stream_options
    label: str = "openai"  # what /v1/models calls it in `supported_endpoint_types`
    # A channel flag that must be true for "native" (a channel with it false is served translated, if the
    # endpoint has a translation for its type, here always onto chat: e.g. `responses: false`).
    native_flag: str | None = None
    over_chat: bool = False  # it has a translation onto chat/completions (served so where not native)
    family: str = ""  # endpoints of one API that share their adapters (responses and calls on a stored one)
    method: str = "POST"

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name)


def _table(*entries: Endpoint) -> dict[str, Endpoint]:
    return {e.name: e for e in entries}


_OPENAI_ONLY: Mapping[str, Mode] = {"openai": "native", "azure": "native"}
# Gemini-native routes (/v1beta/models/{model}:method): passthrough to gemini channels, translated elsewhere.
_GEMINI_ALL: Mapping[str, Mode] = {"gemini": "native", "openai": "chat", "azure": "chat", "anthropic": "chat"}
_GEMINI_EMBED: Mapping[str, Mode] = {"gemini": "native", "openai": "chat", "azure": "chat"}

ENDPOINTS: Mapping[str, Endpoint] = _table(
    Endpoint(
        "chat/completions",
        {"openai": "native", "azure": "native", "anthropic": "native", "gemini": "native"},
        output_fields=("max_completion_tokens", "max_tokens"), stream_usage_option=True,
    ),
    Endpoint("completions", _OPENAI_ONLY, output_fields=("max_tokens",), stream_usage_option=True),
    Endpoint("embeddings", {**_OPENAI_ONLY, "gemini": "native"}, label="embeddings"),
    Endpoint("moderations", _OPENAI_ONLY, label="moderations"),
    Endpoint("images/generations", _OPENAI_ONLY, pricing="images", images=True, label="image-generation"),
    Endpoint("images/edits", _OPENAI_ONLY, body="form", pricing="images", images=True, label="image-generation"),
    Endpoint("images/variations", {"openai": "native"}, body="form", pricing="images", images=True,
             label="image-generation"),
    Endpoint("audio/speech", _OPENAI_ONLY, pricing="speech", label="audio-speech"),
    Endpoint("audio/transcriptions", _OPENAI_ONLY, body="form", pricing="upload", label="audio-transcription"),
    Endpoint("audio/translations", _OPENAI_ONLY, body="form", pricing="upload", label="audio-translation"),
    Endpoint("rerank", {"openai": "native"}, label="jina-rerank"),  # new-api's and Cherry Studio's name
    Endpoint(
        "messages", {"anthropic": "native", "openai": "chat", "azure": "chat"}, dialect="anthropic",
        output_fields=("max_tokens",), label="anthropic",
    ),
    # Anthropic's token count: the upstream's own where it has one, else counted here. Never billed, and
    # counted against a key's request limits only (pricing "none": no tokens against tpm).
    Endpoint(
        "messages/count_tokens", {"anthropic": "native", "openai": "local", "azure": "local", "gemini": "local"},
        dialect="anthropic", pricing="none", label="anthropic",
    ),
    Endpoint(
        "responses", {"openai": "native", "azure": "native", "anthropic": "chat", "gemini": "chat"},
        output_fields=("max_output_tokens",), label="openai-response", native_flag="responses", over_chat=True,
    ),
    Endpoint(
        "gemini/generateContent", _GEMINI_ALL, dialect="gemini", output_fields=("generationConfig.maxOutputTokens",),
        label="gemini", over_chat=True, family="gemini",
    ),
    # Counted by a gemini channel where one serves the model, else by the relay itself (relay.web_gemini).
    Endpoint("gemini/countTokens", {"gemini": "native"}, dialect="gemini", pricing="none", label="gemini",
             family="gemini"),
    Endpoint("gemini/embedContent", _GEMINI_EMBED, dialect="gemini", label="gemini", over_chat=True, family="gemini"),
    Endpoint("gemini/batchEmbedContents", _GEMINI_EMBED, dialect="gemini", label="gemini", over_chat=True,
             family="gemini"),
    # Calls on a stored response: only where it was made (the upstream keeps it), never billed.
    *(
        Endpoint(f"responses/{op}", _OPENAI_ONLY, pricing="none", label="openai-response",
                 native_flag="responses", family="responses", method=method)
        for op, method in (("retrieve", "GET"), ("delete", "DELETE"), ("cancel", "POST"), ("input_items", "GET"))
    ),
)


def mode_for(endpoint: Endpoint, channel: ChannelConfig) -> Mode | None:
    """How `channel` serves `endpoint`: natively, translated onto its chat/completions, or not at all (None)."""
    mode = endpoint.serves.get(channel.type)
    if mode == "native" and endpoint.native_flag and not getattr(channel, endpoint.native_flag, True):
        return "chat" if endpoint.over_chat else None
    return mode

