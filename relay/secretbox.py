"""Upstream secrets sealed at rest: AES-256-GCM with a key derived from RELAY_SECRET. Pure (no I/O).

The key is HKDF-SHA256 of RELAY_SECRET (salt and info fixed, so every process derives the same key); each
value gets a random 96-bit nonce, and the value's place (e.g. "channel:openai-main:keys") is bound in as
associated data, so a sealed value moved to another row or field does not open. A sealed value reads
`v1.<base64url(nonce + ciphertext + tag)>`: nothing of the secret shows.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["MIN_SECRET_LEN", "SecretBox", "SecretError", "box_from_env"]

MIN_SECRET_LEN = 32  # characters: a passphrase shorter than this is too easy to guess offline
_PREFIX = "v1."
_NONCE = 12  # bytes: GCM's standard nonce; random nonces are safe far beyond the number of values stored


class SecretError(Exception):
    """RELAY_SECRET is unusable, or a sealed value does not open with it (another secret sealed it)."""


class SecretBox:
    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LEN:
            raise SecretError(f"RELAY_SECRET must be at least {MIN_SECRET_LEN} characters (it has {len(secret)})")
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"relay secretbox v1", info=b"upstream secrets",
        ).derive(secret.encode())
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, place: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), place.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, sealed: str, place: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise SecretError("not a sealed value")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_PREFIX):] + "=" * (-len(sealed) % 4))
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], place.encode()).decode()
        except (InvalidTag, ValueError) as e:
            raise SecretError("cannot be opened with this RELAY_SECRET (was it changed?)") from e


def box_from_env(env: Mapping[str, str] | None = None) -> SecretBox | None:
    """The box for RELAY_SECRET, or None when it is unset (SecretError when it is too short)."""
    secret = (os.environ if env is None else env).get("RELAY_SECRET", "")
    return SecretBox(secret) if secret else None
