"""Field specs of what the operator writes (channels), from which both the checks and the JSON Schema of the
admin API's OpenAPI document are derived, so a rule is written once. Pure: no framework, no I/O.

config.yaml's channel parser uses the same rules (relay/config.py): a type, URL, model list or weight that
the admin API refuses is refused in config.yaml with the same words, under the field's YAML path.
A failed check raises FieldError(param, message); the admin API renders it in OpenAI's error shape
(`'base_url' must be ...`), the config parser as `channels[0].base_url: must be ...`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CHANNEL_FIELDS", "CHANNEL_TYPES", "FieldError", "Spec", "Specs"]

CHANNEL_TYPES = ("openai", "azure", "anthropic", "gemini")
_MAX_INT = 10**15


class FieldError(ValueError):
    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(f"{param}: {message}")
        self.param, self.message, self.code = param, message, code


@dataclass(frozen=True, slots=True)
class Spec:
    """One writable field. kind: text | url | proxy | int | bool | enum | names (a list of non-empty
    strings) | map (string -> string)."""

    name: str
    kind: str
    doc: str
    required: bool = False  # on create
    nullable: bool = False
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    max_len: int = 200
    min_items: int = 0
    write_only: bool = False  # a secret: accepted, never shown
    create_only: bool = False  # set on create, not changed afterwards (the name: it is the row's key)

    def check(self, value: Any) -> Any:
        """The checked value (lists as tuples, text stripped), or FieldError naming the field."""
        if value is None:
            if self.nullable:
                return None
            raise FieldError(self.name, "must not be null.")
        kind = self.kind
        if kind in ("text", "url", "proxy", "enum"):
            if not isinstance(value, str):
                raise FieldError(self.name, "must be a string.")
            text = value.strip()
            if kind == "enum":
                if text not in self.choices:
                    raise FieldError(self.name, f"must be one of {', '.join(self.choices)}, not {value!r}.")
                return text
            if kind == "url" or (kind == "proxy" and text != "env"):
                if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", text):
                    what = "an http:// or https:// URL" + (" (or env)" if kind == "proxy" else "")
                    raise FieldError(self.name, f"must be {what}.")
                return text.rstrip("/") if kind == "url" else text
            if not text or len(text) > self.max_len or not text.isprintable() or "/" in text and self.create_only:
                raise FieldError(
                    self.name, f"must be a non-empty string of at most {self.max_len} printable characters"
                    + (" without '/'." if self.create_only else "."),
                )
            return text
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise FieldError(self.name, "must be an integer" + (" (or null for no limit)." if self.nullable else "."))
            lo = -_MAX_INT if self.lo is None else self.lo
            hi = _MAX_INT if self.hi is None else self.hi
            if not lo <= value <= hi:
                if self.hi is None:
                    raise FieldError(self.name, f"must be at least {lo}, not {value}.")
                raise FieldError(self.name, f"must be between {lo} and {hi}, not {value}.")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise FieldError(self.name, "must be true or false.")
            return value
        if kind == "names":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
                raise FieldError(self.name, "must be a list of non-empty strings.")
            items = tuple(dict.fromkeys(v.strip() for v in value))
            if len(items) < self.min_items:
                raise FieldError(self.name, f"at least {self.min_items} {'is' if self.min_items == 1 else 'are'} required.")
            return items
        if kind == "map":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and k.strip() and isinstance(v, str) for k, v in value.items()
            ):
                raise FieldError(self.name, "must be an object of strings.")
            return {k.strip(): v for k, v in value.items()}
        raise AssertionError(kind)

    def json_schema(self) -> dict[str, Any]:
        kind = self.kind
        out: dict[str, Any]
        if kind in ("text", "url", "proxy"):
            out = {"type": "string", "minLength": 1}
            if kind == "text":
                out["maxLength"] = self.max_len
                if self.create_only:
                    out["pattern"] = "^[^/]+$"
            if kind == "url":
                out["pattern"] = "^https?://"
            if kind == "proxy":
                out["pattern"] = "^(env|https?://.+)$"
        elif kind == "enum":
            out = {"enum": list(self.choices)}
        elif kind == "int":
            out = {"type": "integer"}
            if self.lo is not None:
                out["minimum"] = self.lo
            if self.hi is not None:
                out["maximum"] = self.hi
        elif kind == "bool":
            out = {"type": "boolean"}
        elif kind == "names":
            out = {"type": "array", "items": {"type": "string", "minLength": 1}}
            if self.min_items:
                out["minItems"] = self.min_items
        else:
            out = {"type": "object", "additionalProperties": {"type": "string"}}
        if self.nullable:
            if "enum" in out:
                out["enum"].append(None)
            else:
                out["type"] = [out["type"], "null"]
        out["description"] = self.doc
        if self.write_only:
            out["writeOnly"] = True
        return out


class Specs:
    """The fields of one kind of object, in order."""

    def __init__(self, *specs: Spec) -> None:
        self.fields = {s.name: s for s in specs}

    def __getitem__(self, name: str) -> Spec:
        return self.fields[name]

    def check(self, name: str, value: Any) -> Any:
        return self.fields[name].check(value)

    def check_body(self, data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        """A create or update body -> checked values; unknown, missing or (on update) fixed fields refused."""
        allowed = [s.name for s in self.fields.values() if creating or not s.create_only]
        for name in data:
            if name not in allowed:
                raise FieldError(name, f"is not a field here. Allowed fields: {', '.join(allowed)}.", "unknown_parameter")
        if creating:
            for s in self.fields.values():
                if s.required and s.name not in data:
                    raise FieldError(s.name, "is required.", "missing_required_parameter")
        return {name: self.fields[name].check(value) for name, value in data.items()}

    def json_schema(self, *, creating: bool) -> dict[str, Any]:
        specs = [s for s in self.fields.values() if creating or not s.create_only]
        out: dict[str, Any] = {
            "type": "object", "additionalProperties": False,
            "properties": {s.name: s.json_schema() for s in specs},
        }
        if creating:
            out["required"] = [s.name for s in specs if s.required]
        return out

    def shown(self) -> list[Spec]:
        return [s for s in self.fields.values() if not s.write_only]


CHANNEL_FIELDS = Specs(
    Spec("name", "text", "The channel's name (unique; it names the channel in URLs, logs and metrics)",
         required=True, max_len=100, create_only=True),
    Spec("type", "enum", "The upstream's API: openai (any OpenAI-compatible API), azure, anthropic or gemini",
         choices=CHANNEL_TYPES),
    Spec("base_url", "url", "The upstream's base URL, as the provider's own SDK takes it", required=True),
    Spec("keys", "names", "Upstream API keys, one account each; write-only (answers show a short prefix)",
         required=True, min_items=1, write_only=True),
    Spec("models", "names", "Public model names this channel serves", required=True, min_items=1),
    Spec("model_map", "map", "Public model name -> the upstream's name"),
    Spec("weight", "int", "Share within its priority tier", lo=1, hi=1000),
    Spec("priority", "int", "Higher tiers are tried first", lo=-1_000_000, hi=1_000_000),
    Spec("rpm", "int", "Requests per minute each account may take; null: no budget", nullable=True, lo=1),
    Spec("tpm", "int", "Tokens per minute each account may take; null: no budget", nullable=True, lo=1),
    Spec("headers", "map", "Extra headers sent upstream; write-only (they may hold credentials)", write_only=True),
    Spec("api_version", "text", "azure: the api-version query parameter", nullable=True, max_len=64),
    Spec("responses", "bool", "openai/azure: the upstream has a Responses API (false: served over chat)"),
    Spec("vendor", "text", "Who makes its models, for /v1/models' owned_by", nullable=True, max_len=64),
    Spec("test_model", "text", "The model health probes use (default: the first model)", nullable=True),
    Spec("proxy", "proxy", "An HTTP proxy for this channel's upstream traffic, or env; shown with its password masked",
         nullable=True, write_only=True),
    Spec("enabled", "bool", "false: kept but not served"),
)
