"""The admin API's OpenAPI 3.1 document, served at /admin/openapi.json."""

from __future__ import annotations

from typing import Any

from .admin_schema import CHANNEL_FIELDS, KEY_FIELDS

__all__ = ["HEALTH_PATHS", "OPENAPI"]

# -- the OpenAPI document ---------------------------------------------------------------------------------

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(type_: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": [type_, "null"], "description": description, **extra}


def _ok(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        400: "Bad request body or parameter", 401: "Missing or wrong admin token", 403: "The admin API is disabled",
        404: "No such key (or channel, or account)",
        409: "The key's balance is unlimited; the channel exists already, comes from config.yaml, or has secrets "
             "to store without RELAY_SECRET set",
    }
    return {str(s): {"description": why[s], "content": {"application/json": {"schema": _ref("Error")}}}
            for s in (401, 403, *statuses)}


# What a key answer shows of the writable fields, as KEY_FIELDS (relay/admin_schema.py) describes them.
_WRITABLE = {s.name: s.json_schema() for s in KEY_FIELDS.shown() if s.name not in ("quota_usd", "status")}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "The key's id (key_...) or its displayed prefix (sk-XXXX)"}
_KEY_OUT = _ok("The key", _ref("Key"))

# -- channels: the request schemas come from relay/admin_schema.py, as do the checks ------------------------

_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "The channel's name"}
_CHANNEL_OUT = _ok("The channel (keys never shown: each account has a short prefix)", _ref("Channel"))


def _account_route(action: str) -> dict[str, Any]:
    return {
        "parameters": [_NAME_PARAM, {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0},
                                     "description": "The account's index in the channel's keys"}],
        "post": {"operationId": f"{action}ChannelAccount",
                 "summary": f"{action.capitalize()} one account of a channel, in every process and across restarts",
                 "responses": {**_CHANNEL_OUT, **_errors(404)}},
    }


_CHANNEL_PATHS: dict[str, Any] = {
    "/admin/channels": {
        "get": {"operationId": "listChannels", "summary": "List channels (config.yaml's and the API's)",
                "responses": {**_ok("Every channel", {"type": "object", "required": ["object", "data"], "properties": {
                    "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Channel")}}}), **_errors()}},
        "post": {
            "operationId": "createChannel", "summary": "Add a channel; it serves in every process within a second",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChannelCreate")}}},
            "responses": {**_ok("The new channel", _ref("Channel"), "201"), **_errors(400, 409)},
        },
    },
    "/admin/channels/{name}": {
        "parameters": [_NAME_PARAM],
        "get": {"operationId": "getChannel", "summary": "One channel", "responses": {**_CHANNEL_OUT, **_errors(404)}},
        "patch": {
            "operationId": "updateChannel", "summary": "Change a channel added through the API (keys: replaces them)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChannelUpdate")}}},
            "responses": {**_CHANNEL_OUT, **_errors(400, 404, 409)},
        },
        "delete": {
            "operationId": "deleteChannel", "summary": "Delete a channel added through the API",
            "responses": {**_ok("Deleted", _ref("ChannelDeleted")), **_errors(404, 409)},
        },
    },
    "/admin/channels/{name}/accounts/{index}/enable": _account_route("enable"),
    "/admin/channels/{name}/accounts/{index}/disable": _account_route("disable"),
}


def _channel_out() -> dict[str, Any]:
    shown = {s.name: s.json_schema() for s in CHANNEL_FIELDS.shown()}
    return {
        "type": "object",
        "required": ["object", "name", "source", "enabled", *shown, "accounts", "created_at", "updated_at", "rev"],
        "properties": {
            "object": {"const": "channel"},
            **shown,
            "source": {"enum": ["config", "api"], "description": "config: seeded from config.yaml (change it there)"},
            "header_names": {"type": "array", "items": {"type": "string"}, "description": "Names of its extra headers"},
            "proxy": {"type": ["string", "null"], "description": "Its HTTP proxy, the password masked"},
            "accounts": {"type": "array", "items": _ref("ChannelAccount")},
            "secrets_readable": {"type": "boolean",
                                 "description": "false: its keys cannot be decrypted with this RELAY_SECRET"},
            "created_at": {"type": "number"}, "updated_at": {"type": "number"},
            "rev": {"type": "integer", "description": "The channels' change counter at its last change"},
        },
    }

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "relay admin API", "version": "1", "description": (
        "Client keys, balances and usage of the relay. Every route needs `Authorization: Bearer <admin_token>`. "
        "Errors use OpenAI's shape. Key secrets are returned once, by the create call, and never stored.")},
    "security": [{"bearerAuth": []}],
    "paths": {
        "/admin/keys": {
            "post": {
                "operationId": "createKey", "summary": "Create a client key",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("KeyCreate")}}},
                "responses": {**_ok("The new key, with its secret (shown only this once)", _ref("KeyCreated"), "201"),
                              **_errors(400)},
            },
            "get": {
                "operationId": "listKeys", "summary": "List client keys (never their secrets or hashes)",
                "responses": {**_ok("Every key", {"type": "object", "required": ["object", "data"], "properties": {
                    "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Key")}}}), **_errors()},
            },
        },
        "/admin/keys/{id}": {
            "parameters": [_ID_PARAM],
            "get": {"operationId": "getKey", "summary": "One key", "responses": {**_KEY_OUT, **_errors(404)}},
            "patch": {
                "operationId": "updateKey", "summary": "Change a key's admin fields",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("KeyUpdate")}}},
                "responses": {**_KEY_OUT, **_errors(400, 404)},
            },
            "delete": {"operationId": "deleteKey", "summary": "Revoke a key (its usage history is kept)",
                       "responses": {**_KEY_OUT, **_errors(404)}},
        },
        "/admin/keys/{id}/revoke": {
            "parameters": [_ID_PARAM],
            "post": {"operationId": "revokeKey", "summary": "Revoke a key",
                     "responses": {**_KEY_OUT, **_errors(404)}},
        },
        "/admin/keys/{id}/topup": {
            "parameters": [_ID_PARAM],
            "post": {
                "operationId": "topUpKey", "summary": "Add USD to a key's granted balance",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["usd"], "additionalProperties": False,
                    "properties": {"usd": {"type": "number", "exclusiveMinimum": 0}}}}}},
                "responses": {**_KEY_OUT, **_errors(400, 404, 409)},
            },
        },
        "/admin/usage": {
            "get": {
                "operationId": "usage", "summary": "Requests, tokens and cost from the ledger, grouped",
                "parameters": [
                    {"name": "key", "in": "query", "schema": {"type": "string"}, "description": "A key's id or prefix"},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"},
                     "description": "YYYY-MM-DD (UTC), inclusive"},
                    {"name": "by", "in": "query", "schema": {"type": "string", "default": "key,model,day"},
                     "description": "Comma-separated grouping among key, model, day"},
                ],
                "responses": {**_ok("Usage rows", {"type": "object", "required": ["object", "by", "data"], "properties": {
                    "object": {"const": "list"}, "by": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": _ref("UsageRow")}}}), **_errors(400, 404)},
            },
        },
        **_CHANNEL_PATHS,
        "/admin/openapi.json": {
            "get": {"operationId": "openapi", "summary": "This document",
                    "responses": {**_ok("OpenAPI 3.1 document", {"type": "object"}), **_errors()}},
        },
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "The admin_token from the relay's config"}},
        "schemas": {
            "Key": {
                "type": "object",
                "required": ["id", "name", "prefix", "status", "models", "granted_usd", "spent_usd", "remaining_usd"],
                "properties": {
                    "id": {"type": "string", "examples": ["key_0123456789abcdef"]},
                    "prefix": {"type": "string", "description": "The secret's first 7 characters", "examples": ["sk-AbCd"]},
                    "status": {"enum": ["active", "revoked"]},
                    "granted_usd": _nullable("number", "USD granted (quota and top-ups); null: unlimited"),
                    "spent_usd": {"type": "number"},
                    "remaining_usd": _nullable("number", "granted - spent; null: unlimited"),
                    "created_at": {"type": "number", "description": "unix seconds"},
                    **_WRITABLE,
                    "expires_at": _nullable("number", "unix seconds; null: never"),
                    "models": {"type": "array", "items": {"type": "string"}},
                    "ip_allow": {"type": "array", "items": {"type": "string"}},
                },
            },
            "KeyCreated": {"allOf": [_ref("Key"), {
                "type": "object", "required": ["key"],
                "properties": {"key": {"type": "string", "description": "The secret; returned only by this call"}}}]},
            "KeyCreate": KEY_FIELDS.json_schema(creating=True),
            "KeyUpdate": KEY_FIELDS.json_schema(creating=False),
            "UsageRow": {
                "type": "object",
                "required": ["requests", "ok", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"],
                "properties": {
                    "key": {"type": "string", "description": "Key id (when grouped by key)"},
                    "model": {"type": "string"}, "day": {"type": "string", "format": "date"},
                    "requests": {"type": "integer"}, "ok": {"type": "integer", "description": "Requests answered < 400"},
                    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"}, "cost_usd": {"type": "number"},
                },
            },
            "ChannelCreate": CHANNEL_FIELDS.json_schema(creating=True),
            "ChannelUpdate": CHANNEL_FIELDS.json_schema(creating=False),
            "Channel": _channel_out(),
            "ChannelAccount": {
                "type": "object", "required": ["index", "prefix", "enabled"], "additionalProperties": False,
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "prefix": {"type": ["string", "null"], "description": "The key's first characters (at most 7)"},
                    "enabled": {"type": "boolean", "description": "false: turned off by the operator"},
                },
            },
            "ChannelDeleted": {
                "type": "object", "required": ["object", "name", "deleted"],
                "properties": {"object": {"const": "channel.deleted"}, "name": {"type": "string"},
                               "deleted": {"const": True}},
            },
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
            },
        },
    },
}


# -- account health: probes on demand and the internal view -------------------------------------------------

_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "The channel's name"}
_STATE = {"enum": ["active", "resting", "out"]}
_PROBE = {
    "type": "object", "required": ["ok", "kind", "status", "latency_ms", "error", "at"],
    "properties": {
        "ok": {"type": "boolean"},
        "kind": {"enum": ["ok", "auth", "quota", "rate_limited", "server", "connect", "timeout", "bad_request"]},
        "status": _nullable("integer", "The upstream's HTTP status; null: no answer"),
        "latency_ms": {"type": "number"}, "error": {"type": "string", "description": "Status and error code"},
        "at": {"type": "number", "description": "unix seconds"}, "model": {"type": "string"},
    },
}
HEALTH_PATHS: dict[str, Any] = {
    "/admin/channels/{name}/test": {
        "parameters": [_NAME_PARAM],
        "post": {
            "operationId": "testChannel", "summary": "Probe every account of a channel now",
            "responses": {**_ok("One probe per account", {
                "type": "object", "required": ["channel", "accounts"], "properties": {
                    "channel": {"type": "string"},
                    "accounts": {"type": "array", "items": {
                        "type": "object", "required": ["index", "state", "ok", "status", "latency_ms", "error"],
                        "properties": {
                            "index": {"type": "integer"}, "state": _STATE, "ok": {"type": "boolean"},
                            "status": _nullable("integer", "The upstream's HTTP status; null: no answer"),
                            "latency_ms": {"type": "number"}, "error": {"type": "string"}}}}}}),
                **_errors(), "404": {"description": "No such channel",
                                     "content": {"application/json": {"schema": _ref("Error")}}}},
        },
    },
    "/admin/health": {
        "get": {
            "operationId": "health", "summary": "Every channel and account: state, reason, last probe, streaks",
            "responses": {**_ok("The health view", {
                "type": "object", "required": ["probes", "channels"], "properties": {
                    "probes": {"type": "object", "description": "enabled, interval, and whether this process probes"},
                    "channels": {"type": "array", "items": {
                        "type": "object", "required": ["name", "accounts"], "properties": {
                            "name": {"type": "string"},
                            "accounts": {"type": "array", "items": {
                                "type": "object", "required": ["index", "state", "reason", "last_probe"],
                                "properties": {
                                    "index": {"type": "integer"}, "state": _STATE, "reason": {"type": "string"},
                                    "last_probe": {"oneOf": [_PROBE, {"type": "null"}]},
                                    "ok_streak": {"type": "integer"}, "fail_streak": {"type": "integer"},
                                    "traffic_failures": {"type": "integer"}}}}}}}}}),
                **_errors()},
        },
    },
}
OPENAPI["paths"].update(HEALTH_PATHS)
