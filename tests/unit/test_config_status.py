"""The `status:` section of config.yaml: defaults, values, and errors that name the YAML path."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, StatusConfig, parse_config


def test_defaults_and_values() -> None:
    assert parse_config({}, {}).status == StatusConfig("Service status", "", False, 300)
    raw = {"status": {"title": "${TITLE}", "note": "see news", "show_channels": True, "bucket": 60}}
    assert parse_config(raw, {"TITLE": "Model status"}).status == StatusConfig("Model status", "see news", True, 60)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"bucket": 0}, "status.bucket: must be between 1 and 86400"),
        ({"bucket": 86401}, "status.bucket: must be between 1 and 86400"),
        ({"show_channel": True}, "status.show_channel: unknown field"),
    ],
)
def test_errors_name_the_field(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"status": section}, {})
