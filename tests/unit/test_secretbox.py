"""Sealed upstream secrets: AES-256-GCM under a key derived from RELAY_SECRET."""

from __future__ import annotations

import pytest

from relay.secretbox import SecretBox, SecretError, box_from_env

SECRET = "a-relay-secret-of-at-least-32-characters!"


def test_a_sealed_value_opens_with_the_same_secret_and_place_only() -> None:
    box = SecretBox(SECRET)
    sealed = box.seal("sk-upstream-key", "channel:a:keys")
    assert "sk-upstream" not in sealed and sealed.startswith("v1.")
    assert box.seal("sk-upstream-key", "channel:a:keys") != sealed  # a new nonce each time
    assert SecretBox(SECRET).open(sealed, "channel:a:keys") == "sk-upstream-key"
    with pytest.raises(SecretError, match="RELAY_SECRET"):
        SecretBox(SECRET + "x").open(sealed, "channel:a:keys")
    with pytest.raises(SecretError):
        box.open(sealed, "channel:b:keys")  # moved to another row
    with pytest.raises(SecretError):
        box.open(sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1], "channel:a:keys")


def test_the_secret_must_be_long_enough() -> None:
    with pytest.raises(SecretError, match="at least 32 characters"):
        SecretBox("short")
    assert box_from_env({}) is None
    assert box_from_env({"RELAY_SECRET": SECRET}) is not None
