"""What a config does that its operator most likely did not mean: one line each, logged at start. Pure."""

from __future__ import annotations

import ipaddress

from .config import Config, hash_key

__all__ = ["DEMO_KEY", "warnings"]

DEMO_KEY = "sk-relay-demo"  # config.yaml's default demo key: public, printed in the README


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" / 0.0.0.0 style wildcards: reachable from elsewhere


def warnings(cfg: Config, host: str | None = None) -> list[str]:
    out: list[str] = []
    served = sorted({m for ch in cfg.channels for m in ch.models})
    if not served:
        out.append("no channel serves any model: every request will get 404 (set a provider key, or RELAY_DEMO)")
    unpriced = [m for m in served if m not in cfg.prices]
    if unpriced:
        what = "refused (403 model_not_priced)" if cfg.billing.require_prices else "served free"
        out.append(f"models without a price (prices:) are {what}: {', '.join(unpriced)}")
    listen = host or cfg.server.host
    demo = hash_key(DEMO_KEY)
    if not _loopback(listen) and any(k.key_hash == demo for k in cfg.client_keys):
        out.append(f"the public demo key {DEMO_KEY} is accepted on {listen}, reachable from other machines: "
                   "set RELAY_DEMO_KEY to a secret (or remove the key)")
    if not cfg.admin_token:
        out.append("the admin API is disabled (no admin_token): set RELAY_ADMIN_TOKEN to manage keys over HTTP")
    return out
