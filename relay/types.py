"""Typed values that cross module boundaries.

Per-request objects are frozen and slotted: they are created once per request and never mutated, so any
module may hold them without copying.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BodyFactory",
    "FormField",
    "KeyRecord",
    "ModelReasoning",
    "ReasoningTable",
    "RelayRequest",
    "Target",
    "UpstreamRequest",
    "Usage",
    "UsageRecord",
    "with_egress",
]

# A body that streams (multipart uploads): called once per attempt, so failover can replay it.
BodyFactory = Callable[[], AsyncIterator[bytes]]

Dialect = Literal["openai", "anthropic", "gemini"]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A client key as the store holds it and the request path sees it. Never the secret, only its hash.

    `granted_usd` is written by the operator (create, top-up); `spent_usd` only by the relay, so the two
    never race. None for granted_usd: no balance limit. A limit that is None is no limit.
    """

    id: str
    name: str
    key_hash: str
    prefix: str
    models: tuple[str, ...] = ()  # names or globs; empty: every model
    status: str = "active"  # active | revoked
    expires_at: float | None = None  # unix time
    granted_usd: float | None = None
    spent_usd: float = 0.0
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    ipm: int | None = None
    ip_allow: tuple[str, ...] = ()  # CIDRs; empty: any address
    group: str = "default"
    created_at: float = 0.0
    rev: int = 0  # the store's change counter at this key's last admin change

    def public(self) -> dict[str, object]:
        """What an operator may see: everything but the hash."""
        return {
            "id": self.id, "name": self.name, "prefix": self.prefix, "status": self.status,
            "models": list(self.models), "expires_at": self.expires_at, "granted_usd": self.granted_usd,
            "spent_usd": round(self.spent_usd, 9), "rpm": self.rpm, "rpd": self.rpd, "tpm": self.tpm,
            "tpd": self.tpd, "ipm": self.ipm, "ip_allow": list(self.ip_allow), "group": self.group,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class FormField:
    """One part of a multipart upload; a file part is spooled to disk, never held whole in memory."""

    name: str
    value: bytes = b""
    filename: str | None = None
    content_type: str | None = None
    spool: Any = None  # a tempfile holding a file part's bytes


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """One client request, parsed once at the edge."""

    id: str
    endpoint: str  # "chat/completions", "embeddings", ... (no leading slash, no /v1)
    model: str
    body: bytes  # the client's body bytes, untouched (b"" for multipart)
    json: Mapping[str, Any] | None  # the parsed JSON body, when the body is JSON
    stream: bool
    wants_usage: bool  # the client itself asked for stream usage (stream_options.include_usage)
    key: KeyRecord
    started: float  # time.monotonic() at arrival
    dialect: Dialect = "openai"
    form: tuple[FormField, ...] = ()
    content_type: str = "application/json"
    query: str = ""
    # client headers an adapter may forward as they are (anthropic-version, anthropic-beta on /v1/messages)
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = ""  # the upstream path after /v1 when it is not the endpoint's name (responses/{id}/cancel)
    pin: str | None = None  # the uid of the one account that may serve it (it holds the state named)
    sticky: str | None = None  # requests with the same value keep to one account (prompt caches)


# How a model takes a reasoning effort: `budget` a token budget (Claude's thinking.budget_tokens, Gemini's
# thinkingBudget), `adaptive` Claude's thinking {"type": "adaptive"} with output_config.effort, `level`
# Gemini's thinkingLevel, `effort` OpenAI's reasoning_effort (the /v1/messages `thinking` param goes over).
ReasoningStyle = Literal["budget", "adaptive", "level", "effort"]
REASONING_STYLES = ("budget", "adaptive", "level", "effort")

# OpenAI reasoning_effort -> thinking tokens. 1024 is Claude's minimum budget; 24576 is Gemini 2.5 Flash's
# maximum (and within Pro's 32768).
DEFAULT_BUDGETS: Mapping[str, int] = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}
# Models whose style is not `budget`, by glob over the upstream model name (first match wins). Claude Opus 4.7
# accepts only adaptive thinking; Opus/Sonnet 4.6 deprecate budget_tokens; Gemini 3 takes thinkingLevel.
_NOT_BUDGET: tuple[tuple[str, ReasoningStyle], ...] = (
    ("claude-opus-4-7*", "adaptive"), ("claude-opus-4-6*", "adaptive"), ("claude-sonnet-4-6*", "adaptive"),
    ("claude-mythos*", "adaptive"), ("gemini-3*", "level"), ("o1*", "effort"), ("o3*", "effort"),
    ("o4*", "effort"), ("gpt-5*", "effort"),
)
DEFAULT_REASONING_MODELS: tuple[tuple[str, ReasoningStyle | None, Mapping[str, int]], ...] = tuple(
    (glob, style, {}) for glob, style in _NOT_BUDGET
)


@dataclass(frozen=True, slots=True)
class ModelReasoning:
    """How one model takes a reasoning effort (see ReasoningTable)."""

    style: ReasoningStyle = "budget"
    budgets: Mapping[str, int] = field(default_factory=lambda: DEFAULT_BUDGETS)


@dataclass(frozen=True, slots=True)
class ReasoningTable:
    """The config's `reasoning:` section: default budgets per effort and per-model overrides by glob."""

    budgets: Mapping[str, int] = field(default_factory=lambda: DEFAULT_BUDGETS)
    models: tuple[tuple[str, ReasoningStyle | None, Mapping[str, int]], ...] = DEFAULT_REASONING_MODELS

    def for_model(self, model: str) -> ModelReasoning:
        name = model.lower().rsplit("/", 1)[-1]
        style: ReasoningStyle | None = None
        budgets: dict[str, int] = {}
        for glob, s, b in self.models:  # the first entry to give a style (or a budget) wins it
            if fnmatch.fnmatchcase(name, glob.lower()):
                if style is None:
                    style = s
                budgets = {**b, **budgets}
        return ModelReasoning(style or "budget", {**self.budgets, **budgets})


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the router's choice of channel and account."""

    channel: str
    channel_type: str
    base_url: str
    account: int  # index of the key within the channel
    api_key: str
    upstream_model: str
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    api_version: str | None = None  # azure: the channel's api-version
    rerank_path: str | None = None  # the channel's rerank_path (a path after base_url, or a whole URL)
    proxy: str | None = field(default=None, repr=False)  # the channel's egress proxy (a secret) or "env"
    reasoning: ReasoningTable = field(default_factory=ReasoningTable)  # how reasoning efforts map, per model


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | BodyFactory | None
    proxy: str | None = field(default=None, repr=False)  # an HTTP proxy URL (a secret) or "env"; None: direct


def with_egress(ureq: UpstreamRequest, target: Target) -> UpstreamRequest:
    """The request to send, through the target channel's egress proxy when it has one (adapters build
    requests without it: where the connection goes is the channel's business, not the dialect's)."""
    if target.proxy is None or ureq.proxy == target.proxy:
        return ureq
    return UpstreamRequest(ureq.method, ureq.url, ureq.headers, ureq.body, target.proxy)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    source: Literal["upstream", "estimate"] = "estimate"
    cached_tokens: int = 0  # part of prompt_tokens served from the provider's prompt cache
    cache_write_tokens: int = 0  # part of prompt_tokens written to the provider's prompt cache (Anthropic)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One ledger row. Holds counts and outcomes only, never prompt or completion text."""

    request_id: str
    ts: float  # unix time at arrival
    key_id: str
    model: str
    endpoint: str
    channel: str | None
    account: int | None
    status: int
    end_reason: str  # ok | client_disconnected | upstream_error | relay_error | shutdown | rejected
    prompt_tokens: int
    completion_tokens: int
    usage_source: str  # upstream | estimate
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    attempts: int
    cost_usd: float = 0.0
    cache_read_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it
    client: str | None = None  # the client's address (behind server.trusted_proxies: the one they forward)
