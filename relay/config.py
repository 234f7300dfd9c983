"""config.yaml -> frozen dataclasses.

`${VAR}` and `${VAR:-default}` are replaced from the environment in every string value. Every error names
the YAML path of the field at fault (`channels[1].base_url: ...`) so the CLI can print one clear line.
Channels, client keys and prices are parsed in relay/config_channels.py.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .admin_schema import CHANNEL_TYPES  # noqa: F401 - re-exported
from .config_channels import (
    ChannelConfig,
    ClientKeyConfig,
    PriceConfig,
    hash_key,
    parse_channels,
    parse_client_keys,
    parse_prices,
)
from .config_health import HealthConfig, parse_health
from .config_reasoning import parse_reasoning
from .config_yaml import ConfigError, Node, expand, read_yaml
from .egress import mask_proxy
from .types import ReasoningTable

__all__ = [
    "CHANNEL_TYPES",
    "BillingConfig",
    "ChannelConfig",
    "ClientKeyConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "LedgerConfig",
    "LimitsConfig",
    "PriceConfig",
    "RetryConfig",
    "RoutingConfig",
    "ServerConfig",
    "StatusConfig",
    "TimeoutConfig",
    "hash_key",
    "load_config",
    "mask_proxy",
    "parse_config",
]

@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024  # JSON bodies: room for several base64 images
    max_upload_bytes: int = 26 * 1024 * 1024  # multipart audio uploads (OpenAI allows 25 MB files)
    # JSON request bodies held by requests in flight, together (past it: 503 with Retry-After). A body
    # costs about 2.5 times its size while in flight (its bytes, its parsed JSON, a rewritten copy).
    max_inflight_body_bytes: int = 512 * 1024 * 1024
    read_timeout: float = 30.0  # a client must send its headers and body within this
    shutdown_grace: float = 30.0  # in-flight requests get this long to finish on SIGTERM
    cors_origins: tuple[str, ...] = ("*",)
    # Reverse proxies (CIDRs) whose X-Forwarded-For / X-Real-IP are believed; from any other address they
    # are ignored, so a client cannot choose the address ip_allow and the logs see.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    connect: float = 10.0
    first_byte: float = 60.0  # until the upstream's response headers
    idle: float = 300.0  # between two chunks of a stream; a stream has no total cap
    unary: float = 600.0  # total for a non-stream call (the upstream sends headers when done)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 3
    deadline: float = 60.0  # no new attempt starts after this many seconds
    cooldown: float = 10.0  # rest after an upstream 429 without Retry-After
    max_cooldown: float = 60.0  # cap on an upstream's Retry-After
    failure_threshold: int = 3  # consecutive 5xx / connect failures before an account rests
    failure_cooldown: float = 5.0


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    sticky_ttl: float = 600.0  # a prompt-cache key keeps its account this long after its last use
    response_ttl: float = 30 * 86400.0  # how long a response id stays bound to the account that made it


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    flush_interval: float = 0.5
    batch_size: int = 1000
    max_pending: int = 100_000  # past this the relay answers 503 instead of accepting unrecorded work
    journal: bool = True  # each row also goes to a file before its answer ends (relay/journal.py)
    journal_dir: str | None = None  # default: relay-journal/ by a SQLite file; in the working directory for PostgreSQL


@dataclass(frozen=True, slots=True)
class BillingConfig:
    max_output_tokens: int = 4096  # reserved for output when a request sets no max_tokens
    groups: Mapping[str, float] = field(default_factory=dict)  # key group -> price multiplier
    require_prices: bool = True  # refuse models without a price (set false to serve them free)
    lease_ttl: float = 60.0  # seconds a process's slice of a key's balance lives unless renewed
    lease_fraction: float = 0.25  # a slice takes this share of what is free (at least what it needs)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    backend: str = "local"  # local (in-process) | redis (shared by every worker and machine)
    redis_url: str = "redis://127.0.0.1:6379/0"
    fail_open: bool = True  # Redis failing during operation: admit (true) or refuse (false)
    timeout: float = 0.05  # seconds a Redis call may take before it counts as failed
    prefix: str = "relay:"  # Redis key prefix: <prefix>rl: key limits, acct: account health, budget: budgets
    sync_interval: float = 0.25  # seconds between reads of the shared account health


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """The public /status page (relay/status_page.py)."""

    title: str = "Service status"
    note: str = ""  # a line under the title (e.g. where incidents are announced)
    show_channels: bool = False  # also list channels and accounts out of rotation (names an operator may keep private)
    bucket: int = 300  # seconds of one bar of the heartbeat and of one stored row of availability history


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    admin_token: str | None = None
    metrics_token: str | None = None  # set: /metrics answers only `Authorization: Bearer <metrics_token>`
    database: str = "relay.db"
    channels: tuple[ChannelConfig, ...] = ()
    client_keys: tuple[ClientKeyConfig, ...] = ()
    prices: Mapping[str, PriceConfig] = field(default_factory=dict)
    billing: BillingConfig = field(default_factory=lambda: BillingConfig())
    limits: LimitsConfig = field(default_factory=lambda: LimitsConfig())
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    log_level: str = "info"
    access_log: str = "text"  # text | json | off: one line per request (relay.access_log)
    reasoning: ReasoningTable = field(default_factory=ReasoningTable)  # also on each channel (Target.reasoning)
    skipped_channels: tuple[str, ...] = ()  # channels left out because their keys are unset


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    p = Path(path)
    raw = read_yaml(p)
    cfg = parse_config(raw if raw is not None else {}, os.environ if env is None else env)
    if cfg.database != ":memory:" and "://" not in cfg.database and not os.path.isabs(cfg.database):
        # a relative database path is relative to the config file, wherever the relay is started from
        cfg = replace(cfg, database=str((p.parent / cfg.database).resolve()))
    jd = cfg.ledger.journal_dir
    if jd is not None and not os.path.isabs(jd):  # relative to the config file too
        cfg = replace(cfg, ledger=replace(cfg.ledger, journal_dir=str((p.parent / jd).resolve())))
    return cfg


def parse_config(raw: Any, env: Mapping[str, str]) -> Config:
    root = Node(expand(raw, env), "")
    root.mapping()
    root.allow(
        "server", "admin_token", "metrics_token", "database", "channels", "client_keys", "prices", "billing", "limits",
        "timeouts", "retry", "routing", "ledger", "log_level", "health", "access_log", "status", "reasoning",
    )
    server = root.child("server")
    srv = ServerConfig(
        host=server.get_str("host", "127.0.0.1"),
        port=server.get_int("port", 8080, lo=0, hi=65535),
        max_body_bytes=server.get_int("max_body_bytes", ServerConfig().max_body_bytes, lo=1024),
        max_upload_bytes=server.get_int("max_upload_bytes", ServerConfig().max_upload_bytes, lo=1024),
        max_inflight_body_bytes=server.get_int(
            "max_inflight_body_bytes", _default_inflight_bytes(), lo=1024 * 1024,
        ),
        read_timeout=server.get_float("read_timeout", ServerConfig().read_timeout),
        shutdown_grace=server.get_float("shutdown_grace", ServerConfig().shutdown_grace, lo=0),
        cors_origins=tuple(server.get_str_list("cors_origins", ["*"])),
        trusted_proxies=_cidrs(server, "trusted_proxies"),
    )
    server.allow(*ServerConfig.__slots__)
    t = root.child("timeouts")
    t.allow(*TimeoutConfig.__slots__)
    timeouts = TimeoutConfig(**{k: t.get_float(k, getattr(TimeoutConfig(), k)) for k in TimeoutConfig.__slots__})
    r = root.child("retry")
    r.allow(*RetryConfig.__slots__)
    retry = RetryConfig(
        attempts=r.get_int("attempts", RetryConfig().attempts, lo=1, hi=20),
        deadline=r.get_float("deadline", RetryConfig().deadline),
        cooldown=r.get_float("cooldown", RetryConfig().cooldown, lo=0),
        max_cooldown=r.get_float("max_cooldown", RetryConfig().max_cooldown, lo=0),
        failure_threshold=r.get_int("failure_threshold", RetryConfig().failure_threshold, lo=1),
        failure_cooldown=r.get_float("failure_cooldown", RetryConfig().failure_cooldown, lo=0),
    )
    rt = root.child("routing")
    rt.allow(*RoutingConfig.__slots__)
    routing = RoutingConfig(
        sticky_ttl=rt.get_float("sticky_ttl", RoutingConfig().sticky_ttl, lo=1),
        response_ttl=rt.get_float("response_ttl", RoutingConfig().response_ttl, lo=60),
    )
    lg = root.child("ledger")
    lg.allow(*LedgerConfig.__slots__)
    ledger = LedgerConfig(
        flush_interval=lg.get_float("flush_interval", LedgerConfig().flush_interval),
        batch_size=lg.get_int("batch_size", LedgerConfig().batch_size, lo=1),
        max_pending=lg.get_int("max_pending", LedgerConfig().max_pending, lo=1),
        journal=lg.get_bool("journal", True),
        journal_dir=lg.get_str("journal_dir", "") or None,
    )
    st = root.child("status")
    st.allow(*StatusConfig.__slots__)
    status = StatusConfig(
        title=st.get_str("title", StatusConfig().title) or StatusConfig().title,
        note=st.get_str("note", ""),
        show_channels=st.get_bool("show_channels", False),
        bucket=st.get_int("bucket", StatusConfig().bucket, lo=1, hi=86400),
    )
    reasoning = parse_reasoning(root.child("reasoning"))
    channels, skipped = parse_channels(root.child("channels", default=[]))
    channels = tuple(replace(c, reasoning=reasoning) for c in channels)
    keys = parse_client_keys(root.child("client_keys", default=[]))
    prices = parse_prices(root.child("prices"))
    b = root.child("billing")
    b.allow("max_output_tokens", "groups", "require_prices", "lease_ttl", "lease_fraction")
    groups = b.child("groups")
    lm = root.child("limits")
    lm.allow("backend", "redis_url", "fail_open", "timeout", "prefix", "sync_interval")
    backend = lm.get_str("backend", "local")
    if backend not in ("local", "redis"):
        raise ConfigError(f"limits.backend: must be local or redis, not {backend!r}")
    redis_url = lm.get_str("redis_url", LimitsConfig().redis_url)
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("limits.redis_url: must be a redis://, rediss:// or unix:// URL")
    limits = LimitsConfig(
        backend=backend, redis_url=redis_url, fail_open=lm.get_bool("fail_open", True),
        timeout=lm.get_float("timeout", LimitsConfig().timeout),
        prefix=lm.get_str("prefix", LimitsConfig().prefix),
        # at most 1 s: every process must see another's findings within a second
        sync_interval=lm.get_float("sync_interval", LimitsConfig().sync_interval, lo=0.01, hi=1.0),
    )
    if not limits.prefix or any(c.isspace() for c in limits.prefix):
        raise ConfigError("limits.prefix: must be a non-empty string without spaces")
    billing = BillingConfig(
        max_output_tokens=b.get_int("max_output_tokens", 4096, lo=1),
        groups={g: groups.get_float(g, 1.0, lo=0) for g in groups.keys()},
        require_prices=b.get_bool("require_prices", True),
        lease_ttl=b.get_float("lease_ttl", BillingConfig().lease_ttl, lo=1),
        lease_fraction=b.get_float("lease_fraction", BillingConfig().lease_fraction, lo=0.01, hi=1),
    )
    database = root.get_str("database", "relay.db") or "relay.db"
    scheme = database.split("://", 1)[0] if "://" in database else None
    if scheme is not None and scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"database: a SQLite file or a postgresql:// URL, not a {scheme}:// URL")
    raw_access = root.mapping().get("access_log")
    if isinstance(raw_access, bool):  # YAML reads a bare `off` as false, `on` as true
        access_log = "text" if raw_access else "off"
    else:
        access_log = root.get_str("access_log", "text").lower()
    if access_log not in ("text", "json", "off"):
        raise ConfigError("access_log: must be text, json or off")
    log_level = root.get_str("log_level", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level: must be one of debug, info, warning, error")
    return Config(
        server=srv,
        admin_token=root.get_str("admin_token", "") or None,
        metrics_token=root.get_str("metrics_token", "") or None,
        database=database,
        channels=channels,
        client_keys=keys,
        prices=prices,
        billing=billing,
        limits=limits,
        timeouts=timeouts,
        retry=retry,
        routing=routing,
        ledger=ledger,
        health=parse_health(root.child("health")),
        status=status,
        log_level=log_level,
        access_log=access_log,
        reasoning=reasoning,
        skipped_channels=skipped,
    )


def _default_inflight_bytes() -> int:
    """512 MiB, or a sixteenth of the machine's memory where that is less: at the ~2.5x a body costs in
    flight, a burst of large bodies then takes at most about a sixth of the machine."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return ServerConfig().max_inflight_body_bytes
    return int(min(ServerConfig().max_inflight_body_bytes, max(64 * 1024 * 1024, memory // 16)))


def _cidrs(node: Node, key: str) -> tuple[str, ...]:
    out = []
    for i, text in enumerate(node.get_str_list(key, [])):
        try:
            out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise ConfigError(f"{node.path}.{key}[{i}]: not an IP address or CIDR block: {text!r}") from None
    return tuple(out)
