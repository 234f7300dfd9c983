"""A channel's egress proxy setting: what a valid one is, and how it may be shown. Pure.

`proxy:` is `env` (HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read by relay.upstream) or an HTTP proxy URL, whose
user and password are secrets like upstream keys: anywhere a channel is shown, `mask_proxy` shows it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["mask_proxy", "valid_proxy"]


def valid_proxy(proxy: str) -> bool:
    """`env`, or http(s)://[user:password@]host[:port] with no path."""
    if proxy == "env":
        return True
    try:
        parts = urlsplit(proxy)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/")


def mask_proxy(proxy: str | None) -> str | None:
    """A proxy setting as it may be shown: a URL's user and password replaced by ***."""
    if proxy is None or proxy == "env":
        return proxy
    try:
        parts = urlsplit(proxy)
        if parts.username is None and parts.password is None:
            return proxy
    except ValueError:
        return "***"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))
