"""Upstream keys masked out of upstream error bodies before a client sees them. Pure.

Providers quote the key they were sent in some errors ("Incorrect API key provided: sk-proj-****abcd"),
and an upstream may echo its whole request. An error body passed through to a client must not carry any
upstream key of the relay: every configured key is replaced wherever it appears, and so is anything that
looks like the key of the attempt (its first 8 characters and what follows them, or a run of mask
characters followed by its last 4), in case the provider quoted it cut or masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MASK", "redact"]

MASK = b"***"
_KEY_CHARS = rb"[A-Za-z0-9_\-\.\*]*"


def redact(body: bytes, keys: Iterable[str], used: str | None = None) -> bytes:
    for key in keys:
        if len(key) >= 8 and (k := key.encode()) in body:
            body = body.replace(k, MASK)
    if used and len(used) >= 12:
        u = used.encode()
        body = re.sub(re.escape(u[:8]) + _KEY_CHARS, MASK, body)
        body = re.sub(rb"[\*\.x]{3,}" + re.escape(u[-4:]), MASK, body)
    return body
