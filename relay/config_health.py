"""The `health:` section of config.yaml: active probes of every account (relay.prober)."""

from __future__ import annotations

from dataclasses import dataclass

from .config_yaml import ConfigError, Node

__all__ = ["DEFAULT_ERROR_KEYWORDS", "HealthConfig", "parse_health"]

# Found in an upstream error body (case-insensitive), these say the account itself cannot serve (no money,
# closed), not that one request was wrong: the account is taken out of rotation and the request fails over.
# OpenAI: 429 {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}, and the codes
# billing_hard_limit_reached, billing_not_active, account_deactivated; Anthropic: 400 "Your credit balance is
# too low to access the Anthropic API" and the error type billing_error. Not "exceeded your current quota"
# or "quota exceeded": Gemini's per-minute rate limits (429 RESOURCE_EXHAUSTED) say exactly that.
DEFAULT_ERROR_KEYWORDS = (
    "insufficient_quota", "billing_hard_limit", "billing_not_active", "account_deactivated",
    "access_terminated", "credit balance is too low", "billing_error",
)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    enabled: bool = True
    interval: float = 60.0  # seconds between two probes of one account (an out account: interval / 4)
    timeout: float = 10.0  # seconds a probe may take
    failures_to_disable: int = 3  # consecutive failed probes that take an account out
    successes_to_enable: int = 2  # consecutive passing probes that bring an out account back
    concurrency: int = 4  # probes in flight at once
    error_keywords: tuple[str, ...] = DEFAULT_ERROR_KEYWORDS
    webhook_url: str | None = None  # POSTed every out/back transition (JSON, never a key)


def parse_health(node: Node) -> HealthConfig:
    node.allow(*HealthConfig.__slots__)
    d = HealthConfig()
    webhook = node.get_str("webhook_url", "") or None
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ConfigError(f"{node.path}.webhook_url: must be an http:// or https:// URL")
    keywords = node.get_str_list("error_keywords", list(d.error_keywords))
    if any(not k.strip() for k in keywords):
        raise ConfigError(f"{node.path}.error_keywords: keywords must not be empty")
    return HealthConfig(
        enabled=node.get_bool("enabled", True),
        interval=node.get_float("interval", d.interval, lo=0.05),
        timeout=node.get_float("timeout", d.timeout, lo=0.05),
        failures_to_disable=node.get_int("failures_to_disable", d.failures_to_disable, lo=1, hi=1000),
        successes_to_enable=node.get_int("successes_to_enable", d.successes_to_enable, lo=1, hi=1000),
        concurrency=node.get_int("concurrency", d.concurrency, lo=1, hi=64),
        error_keywords=tuple(k.strip().lower() for k in keywords),
        webhook_url=webhook,
    )
