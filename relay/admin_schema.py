"""Field specs of what the operator writes (channels, client keys), from which both the checks and the JSON
Schema of the admin API's OpenAPI document are derived, so a rule is written once. Pure: no framework, no I/O.

config.yaml's channel parser uses the same rules (relay/config_channels.py): a type, URL, model list or weight that
the admin API refuses is refused in config.yaml with the same words, under the field's YAML path.
A failed check raises FieldError(param, message); the admin API renders it in OpenAI's error shape
(`'base_url' must be ...`), the config parser as `channels[0].base_url: must be ...`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .egress import valid_proxy

__all__ = ["CHANNEL_FIELDS", "CHANNEL_TYPES", "KEY_FIELDS", "FieldError", "Spec", "Specs", "iso_time", "unix_time"]

CHANNEL_TYPES = ("openai", "azure", "anthropic", "gemini")
_MAX_INT = 10**15
_MAX_USD = 1e12


class FieldError(ValueError):
    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(f"{param}: {message}")
        self.param, self.message, self.code = param, message, code


@dataclass(frozen=True, slots=True)
class Spec:
    """One writable field. kind: text | url | proxy | int | bool | enum | names (a list of non-empty
    strings) | map (string -> string) | usd (a number of USD) | time (ISO 8601 or unix seconds) | cidrs."""

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
    update_only: bool = False  # changed after creation only (a key's status)

    def check(self, value: Any) -> Any:
        """The checked value (lists as tuples, text stripped), or FieldError naming the field."""
        if value is None:
            if self.nullable:
                return () if self.kind in ("names", "cidrs") else None  # a null list: an empty one
            raise FieldError(self.name, "must not be null.")
        kind = self.kind
        if kind == "usd":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FieldError(self.name, "must be a number of USD" + (" (or null for no limit)." if self.nullable else "."))
            if not 0 <= value <= _MAX_USD:
                raise FieldError(self.name, f"must be between 0 and {_MAX_USD:.0f}.")
            return float(value)
        if kind == "time":
            return unix_time(self.name, value)
        if kind == "cidrs":
            out = []
            for v in Spec(self.name, "names", self.doc).check(value):
                try:
                    out.append(str(ipaddress.ip_network(v, strict=False)))
                except ValueError:
                    raise FieldError(
                        self.name, f"holds {v!r}, which is not an IP address or CIDR block (e.g. 10.0.0.0/8).",
                    ) from None
            return tuple(dict.fromkeys(out))
        if kind in ("text", "url", "proxy", "enum"):
            if not isinstance(value, str):
                raise FieldError(self.name, "must be a string.")
            text = value.strip()
            if kind == "enum":
                if text not in self.choices:
                    raise FieldError(self.name, f"must be one of {', '.join(self.choices)}, not {value!r}.")
                return text
            if kind == "proxy":
                if not valid_proxy(text):  # the value is not echoed: it may hold the proxy's password
                    raise FieldError(self.name, "must be env or an http://[user:password@]host:port URL.")
                return text.rstrip("/")
            if kind == "url":
                if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", text):
                    raise FieldError(self.name, "must be an http:// or https:// URL.")
                return text.rstrip("/")
            if not text or len(text) > self.max_len or not text.isprintable() or ("/" in text and self.create_only):
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
        elif kind in ("names", "cidrs"):
            out = {"type": "array", "items": {"type": "string", "minLength": 1}}
            if self.min_items:
                out["minItems"] = self.min_items
        elif kind == "usd":
            out = {"type": "number", "minimum": 0, "maximum": _MAX_USD}
        elif kind == "time":
            out = {"type": ["string", "number"]}
        else:
            out = {"type": "object", "additionalProperties": {"type": "string"}}
        if self.nullable:
            if "enum" in out:
                out["enum"].append(None)
            elif isinstance(out["type"], list):
                out["type"].append("null")
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
        allowed = [s.name for s in self._specs(creating)]
        for name in data:
            if name not in allowed:
                raise FieldError(name, f"is not a field here. Allowed fields: {', '.join(allowed)}.", "unknown_parameter")
        if creating:
            for s in self.fields.values():
                if s.required and s.name not in data:
                    raise FieldError(s.name, "is required.", "missing_required_parameter")
        return {name: self.fields[name].check(value) for name, value in data.items()}

    def _specs(self, creating: bool) -> list[Spec]:
        return [s for s in self.fields.values() if not (s.update_only if creating else s.create_only)]

    def json_schema(self, *, creating: bool) -> dict[str, Any]:
        specs = self._specs(creating)
        out: dict[str, Any] = {
            "type": "object", "additionalProperties": False,
            "properties": {s.name: s.json_schema() for s in specs},
        }
        if creating:
            out["required"] = [s.name for s in specs if s.required]
        return out

    def shown(self) -> list[Spec]:
        return [s for s in self.fields.values() if not s.write_only]


def iso_time(text: str) -> float:
    """ISO 8601 -> unix seconds (a naive time or a bare date is UTC); ValueError if it is not one."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def unix_time(param: str, value: Any) -> float:
    """ISO 8601 or unix seconds -> unix seconds, or FieldError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise FieldError(param, "must be a positive unix time or an ISO 8601 date.")
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return float(text) if text.replace(".", "", 1).isdigit() else iso_time(text)
        except ValueError:
            pass
    raise FieldError(param, f"must be an ISO 8601 date or time (e.g. 2030-01-31 or 2030-01-31T12:00:00Z), not {value!r}.")


KEY_FIELDS = Specs(
    Spec("name", "text", "A label for the key", required=True, max_len=200),
    Spec("quota_usd", "usd", "USD the key may spend (top-ups add to it); null or absent: unlimited", nullable=True),
    Spec("granted_usd", "usd", "USD granted (quota and top-ups); setting it sets the balance; null: unlimited",
         nullable=True),
    *(Spec(name, "int", f"{what}; null: no limit", nullable=True, lo=1, hi=_MAX_INT) for name, what in (
        ("rpm", "Requests per minute"), ("rpd", "Requests per day"), ("tpm", "Tokens per minute"),
        ("tpd", "Tokens per day"), ("ipm", "Images per minute"))),
    Spec("models", "names", "Model names or globs (gpt-4o*) the key may use; empty or null: every model", nullable=True),
    Spec("expires_at", "time", "ISO 8601 (a naive time is UTC) or unix seconds; null: never", nullable=True),
    Spec("ip_allow", "cidrs", "CIDR blocks the key may be used from; empty or null: any address", nullable=True),
    Spec("group", "text", "Billing group (its price multiplier is in billing.groups)", max_len=64),
    Spec("status", "enum", "active, or revoked (it stops working; its usage history is kept)",
         choices=("active", "revoked"), update_only=True),
)

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
