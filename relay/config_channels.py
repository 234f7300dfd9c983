"""Channels, client keys and prices in config.yaml -> frozen dataclasses (for relay/config.py's parse_config).

A channel's fields follow the admin API's rules (relay/admin_schema.py), reported under its YAML path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .admin_schema import CHANNEL_FIELDS, FieldError
from .config_yaml import ConfigError, Node
from .types import ReasoningTable

__all__ = [
    "ChannelConfig", "ClientKeyConfig", "PriceConfig", "hash_key", "parse_channels", "parse_client_keys", "parse_prices",
]


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    name: str
    type: str
    base_url: str
    keys: tuple[str, ...]
    models: tuple[str, ...]
    model_map: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    priority: int = 0
    rpm: int | None = None
    tpm: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    api_version: str | None = None
    responses: bool = True  # openai/azure: the upstream has a Responses API (false: served over chat)
    vendor: str | None = None  # who makes its models, for /v1/models' owned_by (default: from type and base_url)
    test_model: str | None = None  # the public model health probes ask for (default: its first model)
    rerank_path: str | None = None  # where the upstream serves rerank: a path after base_url, or a whole URL
    # An HTTP proxy for this channel's upstream connections (a URL, credentials and all: a secret, never
    # shown), or "env" for HTTPS_PROXY / HTTP_PROXY / NO_PROXY. None: direct.
    proxy: str | None = field(default=None, repr=False)
    reasoning: ReasoningTable = field(default_factory=ReasoningTable)  # the config's `reasoning:` table

    def upstream_model(self, model: str) -> str:
        return self.model_map.get(model, model)


@dataclass(frozen=True, slots=True)
class PriceConfig:
    """USD per 1M tokens (input, cached_input, cache_write, output), per image, per 1M characters, per audio
    minute, per request (rerank models often are)."""

    input: float = 0.0
    cached_input: float | None = None  # prompt tokens read from a prompt cache; None: the input price
    cache_write: float | None = None  # prompt tokens written to a prompt cache; None: the input price
    output: float = 0.0
    image: float = 0.0  # per image when no size/quality entry matches
    images: Mapping[str, float] = field(default_factory=dict)  # "1024x1024" or "1024x1024/hd" -> USD
    characters: float = 0.0
    minute: float = 0.0
    per_request: float = 0.0
    free: bool = False


@dataclass(frozen=True, slots=True)
class ClientKeyConfig:
    name: str
    key_hash: str  # sha256 hex of the key
    prefix: str
    models: tuple[str, ...] = ()
    quota_usd: float | None = None  # the balance it starts with (None: unlimited); top-ups are the store's


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_channels(node: Node) -> tuple[tuple[ChannelConfig, ...], tuple[str, ...]]:
    out: list[ChannelConfig] = []
    skipped: list[str] = []
    names: set[str] = set()
    for c in node.items():
        c.mapping()
        c.allow(
            "name", "type", "base_url", "keys", "models", "model_map", "weight", "priority", "rpm", "tpm",
            "headers", "api_version", "enabled", "responses", "vendor", "test_model", "rerank_path", "proxy",
        )
        name = c.get_str("name")
        if not name:
            raise ConfigError(f"{c.path}.name: required")
        if name in names:
            raise ConfigError(f"{c.path}.name: duplicate channel name {name!r}")
        names.add(name)
        # the admin API's rules (relay/admin_schema.py), under this channel's YAML path
        ctype = _rule(c, "type", c.get_str("type", "openai"))
        base_url = _rule(c, "base_url", c.get_str("base_url"))
        models = _rule(c, "models", c.get_str_list("models"))
        keys = [k for k in c.get_str_list("keys", []) if k]
        enabled = c.get_bool("enabled", True)
        if not keys or not enabled:
            skipped.append(name)
            continue
        mm = c.child("model_map")
        model_map = {k: mm.child(k).get_scalar_str() for k in mm.keys()}
        hd = c.child("headers")
        headers = {k: hd.child(k).get_scalar_str() for k in hd.keys()}
        out.append(
            ChannelConfig(
                name=name,
                type=ctype,
                base_url=base_url,
                keys=tuple(keys),
                models=tuple(models),
                model_map=model_map,
                weight=_rule(c, "weight", c.get_int("weight", 1)),
                priority=_rule(c, "priority", c.get_int("priority", 0)),
                rpm=_rule(c, "rpm", c.get_opt_int("rpm")),
                tpm=_rule(c, "tpm", c.get_opt_int("tpm")),
                headers=headers,
                api_version=c.get_str("api_version", "") or None,
                responses=c.get_bool("responses", True),
                vendor=c.get_str("vendor", "") or None,
                test_model=c.get_str("test_model", "") or None,
                rerank_path=_rerank_path(c),
                proxy=_proxy(c),
            )
        )
    return tuple(out), tuple(skipped)


def _rerank_path(c: Node) -> str | None:
    path = c.get_str("rerank_path", "")
    if path and not path.startswith(("/", "http://", "https://")):
        raise ConfigError(f"{c.path}.rerank_path: a path starting with / (after base_url) or an http(s):// URL")
    return path or None


def _proxy(c: Node) -> str | None:
    proxy = c.get_str("proxy", "")
    return _rule(c, "proxy", proxy) if proxy else None  # the admin API's rule and words


def _rule(c: Node, name: str, value: Any) -> Any:
    try:
        return CHANNEL_FIELDS.check(name, value)
    except FieldError as e:
        raise ConfigError(f"{c.path}.{name}: {e.message.rstrip('.')}") from None


def parse_client_keys(node: Node) -> tuple[ClientKeyConfig, ...]:
    out = []
    for k in node.items():
        k.mapping()
        k.allow("name", "key", "sha256", "models", "quota_usd")
        key = k.get_str("key", "")
        digest = k.get_str("sha256", "").lower()
        if key:
            digest = hash_key(key)
            prefix = key[:7] if len(key) >= 24 else key[:3]  # a short key must not be shown whole
        elif digest:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(f"{k.path}.sha256: must be 64 hex digits")
            prefix = "sha256:" + digest[:6]
        else:
            continue  # a key whose variable is unset is simply absent
        out.append(
            ClientKeyConfig(
                name=k.get_str("name", prefix), key_hash=digest, prefix=prefix,
                models=tuple(k.get_str_list("models", [])),
                quota_usd=k.get_opt_float("quota_usd"),
            )
        )
    return tuple(out)


def parse_prices(node: Node) -> dict[str, PriceConfig]:
    out: dict[str, PriceConfig] = {}
    for model in node.keys():
        p = node.child(model)
        p.allow(
            "input", "cached_input", "cache_write", "output", "image", "images", "characters", "minute", "per_request",
            "free",
        )
        im = p.child("images")
        cached = p.mapping().get("cached_input")
        written = p.mapping().get("cache_write")
        out[model] = PriceConfig(
            input=p.get_float("input", 0.0, lo=0),
            cached_input=None if cached is None else p.get_float("cached_input", 0.0, lo=0),
            cache_write=None if written is None else p.get_float("cache_write", 0.0, lo=0),
            output=p.get_float("output", 0.0, lo=0),
            image=p.get_float("image", 0.0, lo=0),
            images={size: im.get_float(size, 0.0, lo=0) for size in im.keys()},
            characters=p.get_float("characters", 0.0, lo=0),
            minute=p.get_float("minute", 0.0, lo=0),
            per_request=p.get_float("per_request", 0.0, lo=0),
            free=p.get_bool("free", False),
        )
    return out
