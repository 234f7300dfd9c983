"""One schema for channels: the checks and the JSON Schema of the OpenAPI document come from the same specs."""

from __future__ import annotations

import jsonschema
import pytest

from relay.admin_schema import CHANNEL_FIELDS, FieldError

GOOD = {"name": "a", "base_url": "https://api.example.com/v1/", "keys": ["k1"], "models": ["m"]}


def test_a_good_body_is_checked_and_normalised() -> None:
    out = CHANNEL_FIELDS.check_body({**GOOD, "models": [" m ", "m"], "rpm": None}, creating=True)
    assert out["base_url"] == "https://api.example.com/v1" and out["models"] == ("m",) and out["rpm"] is None
    jsonschema.validate(GOOD, CHANNEL_FIELDS.json_schema(creating=True))


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"base_url": "ftp://x"}, "base_url", "invalid_value"),
    ({"type": "grpc"}, "type", "invalid_value"),
    ({"models": []}, "models", "invalid_value"),
    ({"keys": ["", "k"]}, "keys", "invalid_value"),
    ({"weight": 0}, "weight", "invalid_value"),
    ({"weight": True}, "weight", "invalid_value"),
    ({"model_map": {"a": 1}}, "model_map", "invalid_value"),
    ({"name": "a/b"}, "name", "invalid_value"),
    ({"proxy": "socks5://x"}, "proxy", "invalid_value"),
    ({"extra": 1}, "extra", "unknown_parameter"),
])
def test_bad_fields_are_named_and_the_json_schema_refuses_them_too(body: dict, param: str, code: str) -> None:
    with pytest.raises(FieldError) as e:
        CHANNEL_FIELDS.check_body({**GOOD, **body}, creating=True)
    assert (e.value.param, e.value.code) == (param, code)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**GOOD, **body}, CHANNEL_FIELDS.json_schema(creating=True))


def test_create_needs_the_required_fields_and_update_cannot_rename() -> None:
    for name in ("name", "base_url", "keys", "models"):
        with pytest.raises(FieldError) as e:
            CHANNEL_FIELDS.check_body({k: v for k, v in GOOD.items() if k != name}, creating=True)
        assert e.value.param == name and e.value.code == "missing_required_parameter"
    assert CHANNEL_FIELDS.check_body({"weight": 3}, creating=False) == {"weight": 3}
    with pytest.raises(FieldError):
        CHANNEL_FIELDS.check_body({"name": "b"}, creating=False)
    assert CHANNEL_FIELDS.check("proxy", "env") == "env"
