"""The channel service: check, create, change, delete and list channels, and seed them from config.yaml.

The admin API (relay/web_admin_channels.py) and the CLI (`relay channels list`) both call it, so the rules
are written once; the field rules themselves are relay/admin_schema.py's.

Secrets: the keys, headers and proxy of a channel added through the API are sealed with RELAY_SECRET
(relay/secretbox.py) before they reach the store; without RELAY_SECRET they are refused, saying why. A
channel of config.yaml is written without any secret: every process has the config (and its environment),
so its keys never need to be in the database at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from .admin_schema import CHANNEL_FIELDS, FieldError
from .config import ChannelConfig, Config
from .errors import InvalidRequest, NotFound, RelayError
from .health import account_id
from .secretbox import SecretBox, SecretError
from .store_api import ChannelRow, Storage, mask_url

__all__ = [
    "SECRET_FIELDS",
    "ChannelConflict",
    "ChannelService",
    "SecretRequired",
    "channel_fields",
    "config_of",
    "key_prefix",
    "row_of_config",
    "seed",
]

SECRET_FIELDS = ("keys", "headers", "proxy")
_SETTINGS = (
    "type", "base_url", "models", "model_map", "weight", "priority", "rpm", "tpm", "api_version", "responses",
    "vendor", "test_model",
)
_DEFAULTS: dict[str, Any] = {
    "type": "openai", "model_map": {}, "weight": 1, "priority": 0, "rpm": None, "tpm": None, "api_version": None,
    "responses": True, "vendor": None, "test_model": None,
}


class ChannelConflict(RelayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    should_retry = False


class SecretRequired(RelayError):
    status = 409
    type = "invalid_request_error"
    code = "relay_secret_required"
    should_retry = False


def channel_fields(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """A create or update body -> checked values (relay/admin_schema.py's rules), or InvalidRequest."""
    try:
        return CHANNEL_FIELDS.check_body(data, creating=creating)
    except FieldError as e:
        raise InvalidRequest(f"'{e.param}' {e.message}", param=e.param, code=e.code) from None


def key_prefix(key: str) -> str:
    """What an answer may show of an upstream key: at most 7 characters, and a quarter of a short key."""
    return key[: min(7, len(key) // 4)]


def _place(name: str, field: str) -> str:
    return f"channel:{name}:{field}"


def _settings(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: values[k] for k in _SETTINGS if k in values}
    if "models" in out:
        out["models"] = list(out["models"])
    if "model_map" in out:
        out["model_map"] = dict(out["model_map"])
    return out


def row_of_config(ch: ChannelConfig) -> ChannelRow:
    """The store's row for a channel of config.yaml: its settings and account ids, no secret."""
    settings = _settings({k: getattr(ch, k) for k in _SETTINGS})
    return ChannelRow(name=ch.name, source="config", settings=settings, sealed={},
                      accounts=tuple(account_id(k) for k in ch.keys))


def _open(row: ChannelRow, box: SecretBox | None) -> dict[str, Any]:
    """The row's secrets, opened; SecretError when RELAY_SECRET is unset or is not the one that sealed them."""
    if not row.sealed:
        return {}
    if box is None:
        raise SecretError("RELAY_SECRET is not set")
    out: dict[str, Any] = {}
    for field, sealed in row.sealed.items():
        text = box.open(sealed, _place(row.name, field))
        out[field] = text if field == "proxy" else orjson.loads(text)
    return out


def config_of(row: ChannelRow, box: SecretBox | None, local: Mapping[str, ChannelConfig]) -> ChannelConfig | None:
    """The ChannelConfig a row stands for (None: a config channel this process's config does not list).

    A config channel's secrets and settings are this process's own config; an API channel's come from the
    row, its secrets opened with RELAY_SECRET (SecretError when they cannot be)."""
    if row.source == "config":
        return local.get(row.name)
    secrets = _open(row, box)
    values = {**_DEFAULTS, **row.settings}
    return ChannelConfig(
        name=row.name, type=values["type"], base_url=values["base_url"], keys=tuple(secrets.get("keys", ())),
        models=tuple(values["models"]), model_map=dict(values["model_map"]), weight=values["weight"],
        priority=values["priority"], rpm=values["rpm"], tpm=values["tpm"], headers=dict(secrets.get("headers", {})),
        api_version=values["api_version"], responses=values["responses"], vendor=values["vendor"],
        test_model=values["test_model"], proxy=secrets.get("proxy"),
    )


async def seed(store: Storage, cfg: Config) -> list[str]:
    """config.yaml's channels into the store (written when new or changed); config channels it no longer
    lists are deleted (returns their names). Channels added through the API are left alone."""
    for ch in cfg.channels:
        await store.sync_config_channel(row_of_config(ch))
    return await store.retire_config_channels(ch.name for ch in cfg.channels)


class ChannelService:
    """Create, change, delete and list channels in a store; `box` seals secrets (None: RELAY_SECRET unset)."""

    def __init__(self, store: Storage, box: SecretBox | None, local: Iterable[ChannelConfig] = ()) -> None:
        self.store = store
        self.box = box
        self.local = {c.name: c for c in local}

    def _seal(self, name: str, fields: Mapping[str, Any]) -> dict[str, str]:
        given = [f for f in SECRET_FIELDS if f in fields]
        if not given:
            return {}
        if self.box is None:
            raise SecretRequired(
                f"RELAY_SECRET must be set (at least 32 characters) for the relay to store {', '.join(given)}: "
                "upstream secrets are kept only encrypted with a key derived from it. Set it in every relay "
                "process's environment and restart them.", param=given[0],
            )
        out = {}
        for f in given:
            value = fields[f]
            if f == "keys":
                value = orjson.dumps(list(value)).decode()
            elif f == "headers":
                if not value:
                    continue
                value = orjson.dumps(dict(value)).decode()
            elif value is None:
                continue
            out[f] = self.box.seal(value, _place(name, f))
        return out

    async def get(self, name: str) -> ChannelRow:
        row = await self.store.get_channel(name)
        if row is None:
            raise NotFound(f"No channel is named '{name}'.", param="name", code="channel_not_found")
        return row

    async def list_all(self) -> list[ChannelRow]:
        return await self.store.list_channels()

    async def create(self, data: Mapping[str, Any]) -> ChannelRow:
        fields = channel_fields(data, creating=True)
        name = fields["name"]
        sealed = self._seal(name, fields)
        row = ChannelRow(
            name=name, source="api", settings={**_DEFAULTS, **_settings(fields)}, sealed=sealed,
            accounts=tuple(account_id(k) for k in fields["keys"]), enabled=fields.get("enabled", True),
        )
        created = await self.store.create_channel(row)
        if created is None:
            raise ChannelConflict(f"A channel named '{name}' exists already.", param="name", code="channel_exists")
        return created

    async def update(self, name: str, data: Mapping[str, Any]) -> ChannelRow:
        fields = channel_fields(data, creating=False)
        sealed = self._seal(name, fields)
        for _ in range(8):  # read, change, write if nobody wrote in between (else read again)
            row = await self._api_row(name)
            new_sealed = {k: v for k, v in row.sealed.items() if k not in fields} | sealed
            accounts, off = row.accounts, row.accounts_off
            if "keys" in fields:
                accounts = tuple(account_id(k) for k in fields["keys"])
                off = tuple(u for u in off if u in accounts)
            updated = await self.store.update_channel(replace(
                row, settings={**row.settings, **_settings(fields)}, sealed=new_sealed, accounts=accounts,
                accounts_off=off, enabled=fields.get("enabled", row.enabled),
            ))
            if updated is not None:
                return updated
        raise ChannelConflict(f"Channel '{name}' kept changing meanwhile; try again.", param="name")

    async def delete(self, name: str) -> None:
        await self._api_row(name)
        if not await self.store.delete_channel(name):
            raise NotFound(f"No channel is named '{name}'.", param="name", code="channel_not_found")

    async def set_account(self, name: str, index: str, enabled: bool) -> ChannelRow:
        """Turn one account of a channel (config or API) on or off, for every process and across restarts."""
        for _ in range(8):
            row = await self.get(name)
            if not index.isdigit() or int(index) >= len(row.accounts):
                raise NotFound(
                    f"Channel '{name}' has {len(row.accounts)} accounts (0 to {len(row.accounts) - 1}); "
                    f"there is no account {index}.", param="index", code="account_not_found",
                )
            uid = row.accounts[int(index)]
            off = tuple(u for u in row.accounts_off if u != uid) + (() if enabled else (uid,))
            if set(off) == set(row.accounts_off):
                return row
            updated = await self.store.update_channel(replace(row, accounts_off=off))
            if updated is not None:
                return updated
        raise ChannelConflict(f"Channel '{name}' kept changing meanwhile; try again.", param="name")

    async def _api_row(self, name: str) -> ChannelRow:
        row = await self.get(name)
        if row.source == "config":
            raise ChannelConflict(
                f"Channel '{name}' comes from config.yaml: change or remove it there (and restart); its "
                "accounts can still be turned on and off here.", param="name", code="channel_from_config",
            )
        return row

    def view(self, row: ChannelRow) -> dict[str, Any]:
        """The answer for a channel: its settings and accounts, never a secret (a key shows a short prefix)."""
        try:
            ch = config_of(row, self.box, self.local)
            readable = True
        except SecretError:
            ch, readable = None, False
        keys = ch.keys if ch is not None and len(ch.keys) == len(row.accounts) else ()
        off = set(row.accounts_off)
        out: dict[str, Any] = {
            "object": "channel", "name": row.name, "source": row.source, "enabled": row.enabled,
            **{**_DEFAULTS, **row.settings},
            "header_names": sorted(ch.headers) if ch is not None else [],
            "proxy": None if ch is None or ch.proxy is None else mask_url(ch.proxy),
            "accounts": [
                {"index": i, "prefix": key_prefix(keys[i]) if keys else None, "enabled": uid not in off}
                for i, uid in enumerate(row.accounts)
            ],
            "secrets_readable": readable,
            "created_at": row.created_at, "updated_at": row.updated_at, "rev": row.rev,
        }
        return out
