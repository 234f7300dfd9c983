"""The admin API over real HTTP and a real SQLite file: keys created, changed, revoked and topped up through
/admin take effect on the client API at once; secrets and hashes never come back; every route needs the
admin token; errors use OpenAI's shape; the OpenAPI document describes every /admin route.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import CLIENT_KEY, Relay, RelayFactory

ADMIN_TOKEN = "adm-" + "5f3c9e1a" * 4
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MSGS = [{"role": "user", "content": "Hello"}]
ERROR_FIELDS = {"message", "type", "param", "code"}
KEY_FIELDS = {
    "id", "name", "prefix", "status", "models", "expires_at", "granted_usd", "spent_usd", "remaining_usd",
    "rpm", "rpd", "tpm", "tpd", "ipm", "ip_allow", "group", "created_at",
}
METHODS = ("get", "post", "patch", "delete", "put")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> Relay:
    return await relay_factory(admin_token=ADMIN_TOKEN)


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None, *,
               headers: dict[str, str] | None = None, raw: bytes | None = None) -> Answer:
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    hdrs = {**(ADMIN if headers is None else headers)}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    async with http.request(method, url, data=data, headers=hdrs) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def create(http: aiohttp.ClientSession, relay: Relay, **fields: Any) -> dict[str, Any]:
    a = await call(http, "POST", relay.url + "/admin/keys", {"name": "test", **fields})
    assert a.status == 201, a.body
    return a.json  # type: ignore[no-any-return]


async def chat(http: aiohttp.ClientSession, relay: Relay, secret: str, model: str = "demo") -> Answer:
    return await call(http, "POST", relay.v1 + "/chat/completions", {"model": model, "messages": MSGS},
                      headers={"Authorization": f"Bearer {secret}"})


def assert_error(a: Answer, status: int, code: str | None = None, param: Any = ...) -> dict[str, Any]:
    assert a.status == status, a.body
    assert a.headers["Content-Type"].startswith("application/json")
    doc = a.json
    assert set(doc) == {"error"} and set(doc["error"]) == ERROR_FIELDS, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    if code is not None:
        assert doc["error"]["code"] == code, doc
    if param is not ...:
        assert doc["error"]["param"] == param, doc
    return doc["error"]  # type: ignore[no-any-return]


def admin_routes(relay: Relay) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves under /admin."""
    out = []
    for route in relay.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/admin") and route.method != "HEAD":
            out.append((route.method, path))
    assert out
    return out


# -- create, use, read ---------------------------------------------------------------------------------------


async def test_created_key_works_at_once(relay, http):
    k = await create(http, relay, quota_usd=5, rpm=100, models=["demo", "gpt-4o*"], group="default")
    assert set(k) == KEY_FIELDS | {"key"}
    secret = k["key"]
    assert secret.startswith("sk-") and len(secret) >= 40
    assert k["prefix"] == secret[:7]
    assert re.fullmatch(r"key_[0-9a-f]{16}", k["id"])
    assert k["status"] == "active" and k["name"] == "test"
    assert k["granted_usd"] == 5 and k["spent_usd"] == 0 and k["remaining_usd"] == 5
    assert k["models"] == ["demo", "gpt-4o*"] and k["rpm"] == 100 and k["tpm"] is None
    # no wait: the admin call refreshed this process's key cache before answering
    a = await chat(http, relay, secret)
    assert a.status == 200, a.body
    assert (await chat(http, relay, secret, "gpt-4o-mini")).status == 200


async def test_create_with_every_field(relay, http):
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    k = await create(http, relay, name="full", quota_usd=None, rpm=1, rpd=2, tpm=3, tpd=4, ipm=5,
                     models=[], expires_at=expires.isoformat(), ip_allow=["127.0.0.1", "10.0.0.0/8"], group="vip")
    assert k["granted_usd"] is None and k["remaining_usd"] is None
    assert (k["rpm"], k["rpd"], k["tpm"], k["tpd"], k["ipm"]) == (1, 2, 3, 4, 5)
    assert k["expires_at"] == expires.timestamp()
    assert k["ip_allow"] == ["127.0.0.1/32", "10.0.0.0/8"] and k["group"] == "vip"
    unix = await create(http, relay, name="unix", expires_at=time.time() + 3600)
    assert unix["expires_at"] > time.time()


async def test_list_and_get_never_show_secret_or_hash(relay, http):
    made = [await create(http, relay, name=f"k{i}", quota_usd=1) for i in range(3)]
    a = await call(http, "GET", relay.url + "/admin/keys")
    assert a.status == 200
    listed = a.json
    assert listed["object"] == "list"
    ids = [k["id"] for k in listed["data"]]
    assert all(k["id"] in ids for k in made)
    assert "cfg-test" in ids  # the key from config.yaml is listed too
    for item in listed["data"]:
        assert set(item) == KEY_FIELDS
    bodies = [a.body]
    for k in made:
        got = await call(http, "GET", relay.url + f"/admin/keys/{k['id']}")
        assert got.status == 200
        bodies.append(got.body)
    for k in made:
        for body in bodies:
            assert k["key"].encode() not in body
            assert hashlib.sha256(k["key"].encode()).hexdigest().encode() not in body
    for body in bodies:
        assert b"hash" not in body
        assert CLIENT_KEY.encode() not in body and hashlib.sha256(CLIENT_KEY.encode()).hexdigest().encode() not in body


async def test_get_by_id_and_by_prefix(relay, http):
    k = await create(http, relay, name="findme")
    by_id = await call(http, "GET", relay.url + f"/admin/keys/{k['id']}")
    by_prefix = await call(http, "GET", relay.url + f"/admin/keys/{k['prefix']}")
    assert by_id.status == by_prefix.status == 200
    assert by_id.json == by_prefix.json
    assert by_id.json["name"] == "findme" and "key" not in by_id.json
    missing = await call(http, "GET", relay.url + "/admin/keys/key_0000000000000000")
    assert_error(missing, 404, "key_not_found", "id")


# -- changes take effect at once -------------------------------------------------------------------------------


async def test_patch_models_restricts_the_key(relay, http):
    k = await create(http, relay)
    assert (await chat(http, relay, k["key"])).status == 200
    a = await call(http, "PATCH", relay.url + f"/admin/keys/{k['id']}", {"models": ["gpt-4o-mini"]})
    assert a.status == 200 and a.json["models"] == ["gpt-4o-mini"]
    assert_error(await chat(http, relay, k["key"]), 403, "model_not_allowed")
    assert (await chat(http, relay, k["key"], "gpt-4o-mini")).status == 200
    # a glob, set through the prefix
    a = await call(http, "PATCH", relay.url + f"/admin/keys/{k['prefix']}", {"models": ["dem*"]})
    assert a.status == 200
    assert (await chat(http, relay, k["key"])).status == 200
    assert_error(await chat(http, relay, k["key"], "gpt-4o-mini"), 403, "model_not_allowed")
    # back to every model
    a = await call(http, "PATCH", relay.url + f"/admin/keys/{k['id']}", {"models": None, "name": "renamed"})
    assert a.json["models"] == [] and a.json["name"] == "renamed"
    assert (await chat(http, relay, k["key"], "gpt-4o-mini")).status == 200


async def test_patch_expiry_and_addresses(relay, http):
    k = await create(http, relay)
    url = relay.url + f"/admin/keys/{k['id']}"
    assert (await call(http, "PATCH", url, {"ip_allow": ["10.0.0.0/8"]})).status == 200
    assert_error(await chat(http, relay, k["key"]), 403, "ip_not_allowed")
    assert (await call(http, "PATCH", url, {"ip_allow": ["127.0.0.0/8", "::1"]})).status == 200
    assert (await chat(http, relay, k["key"])).status == 200
    assert (await call(http, "PATCH", url, {"expires_at": "2001-01-01T00:00:00Z"})).status == 200
    assert_error(await chat(http, relay, k["key"]), 401, "key_expired")
    assert (await call(http, "PATCH", url, {"expires_at": None})).status == 200
    assert (await chat(http, relay, k["key"])).status == 200


@pytest.mark.parametrize("how", ["delete", "post"])
async def test_revoke(relay, http, how):
    k = await create(http, relay)
    assert (await chat(http, relay, k["key"])).status == 200
    if how == "delete":
        a = await call(http, "DELETE", relay.url + f"/admin/keys/{k['id']}")
    else:
        a = await call(http, "POST", relay.url + f"/admin/keys/{k['prefix']}/revoke")
    assert a.status == 200 and a.json["status"] == "revoked"
    assert_error(await chat(http, relay, k["key"]), 401, "key_revoked")
    # revoking twice is harmless; the key stays listed with its status
    assert (await call(http, "DELETE", relay.url + f"/admin/keys/{k['id']}")).status == 200
    got = await call(http, "GET", relay.url + f"/admin/keys/{k['id']}")
    assert got.json["status"] == "revoked"
    # and an operator may bring it back
    back = await call(http, "PATCH", relay.url + f"/admin/keys/{k['id']}", {"status": "active"})
    assert back.json["status"] == "active"
    assert (await chat(http, relay, k["key"])).status == 200


async def test_topup_raises_granted_and_unblocks(relay, http):
    k = await create(http, relay, quota_usd=0)
    assert_error(await chat(http, relay, k["key"]), 429, "insufficient_quota")
    a = await call(http, "POST", relay.url + f"/admin/keys/{k['id']}/topup", {"usd": 2.5})
    assert a.status == 200, a.body
    assert a.json["granted_usd"] == 2.5 and a.json["remaining_usd"] == 2.5
    assert (await chat(http, relay, k["key"])).status == 200
    a = await call(http, "POST", relay.url + f"/admin/keys/{k['prefix']}/topup", {"usd": 1})
    assert a.json["granted_usd"] == 3.5
    # the in-process spent is shown at once, before the ledger is written
    assert 0 < a.json["spent_usd"] < 0.01
    assert a.json["remaining_usd"] == pytest.approx(3.5 - a.json["spent_usd"])


async def test_topup_of_unlimited_key_is_a_conflict(relay, http):
    k = await create(http, relay)
    a = await call(http, "POST", relay.url + f"/admin/keys/{k['id']}/topup", {"usd": 1})
    err = assert_error(a, 409, "key_unlimited")
    assert "unlimited" in err["message"]


@pytest.mark.parametrize("body", [{"usd": 0}, {"usd": -1}, {"usd": "5"}, {"usd": True}, {}, {"usd": 1, "x": 1}])
async def test_bad_topup(relay, http, body):
    k = await create(http, relay, quota_usd=1)
    a = await call(http, "POST", relay.url + f"/admin/keys/{k['id']}/topup", body)
    assert_error(a, 400)
    assert (await call(http, "GET", relay.url + f"/admin/keys/{k['id']}")).json["granted_usd"] == 1


# -- usage --------------------------------------------------------------------------------------------------


async def test_usage_by_key_model_and_day(relay, http):
    a, b = await create(http, relay, name="a", quota_usd=5), await create(http, relay, name="b", quota_usd=5)
    for _ in range(3):
        assert (await chat(http, relay, a["key"])).status == 200
    assert (await chat(http, relay, a["key"], "gpt-4o-mini")).status == 200
    assert (await chat(http, relay, b["key"])).status == 200
    today = datetime.now(UTC).date().isoformat()

    rows: list[dict[str, Any]] = []
    for _ in range(100):  # the ledger writes every 50 ms in tests
        rows = (await call(http, "GET", relay.url + f"/admin/usage?key={a['id']}")).json["data"]
        if sum(r["requests"] for r in rows) == 4:
            break
        await asyncio.sleep(0.05)
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"demo", "gpt-4o-mini"}
    assert by_model["demo"]["requests"] == 3 and by_model["demo"]["ok"] == 3
    assert by_model["gpt-4o-mini"]["requests"] == 1
    for r in rows:
        assert r["key"] == a["id"] and r["day"] == today
        assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["cost_usd"] > 0
        assert r["total_tokens"] == r["prompt_tokens"] + r["completion_tokens"]

    # by prefix, grouped by model only; all keys grouped by key
    doc = (await call(http, "GET", relay.url + f"/admin/usage?key={a['prefix']}&by=model")).json
    assert doc["by"] == ["model"] and [set(r) - {"requests", "ok", "prompt_tokens", "completion_tokens",
                                                "total_tokens", "cost_usd"} for r in doc["data"]] == [{"model"}] * 2
    everyone = (await call(http, "GET", relay.url + "/admin/usage?by=key")).json["data"]
    assert {r["key"]: r["requests"] for r in everyone if r["key"] in (a["id"], b["id"])} == {a["id"]: 4, b["id"]: 1}
    # since: today includes them, tomorrow has none
    assert (await call(http, "GET", relay.url + f"/admin/usage?key={a['id']}&since={today}")).json["data"] == rows
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert (await call(http, "GET", relay.url + f"/admin/usage?since={tomorrow}")).json["data"] == []
    # the spent the key reports matches what the ledger charged it
    got = (await call(http, "GET", relay.url + f"/admin/keys/{a['id']}")).json
    assert got["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-6)


@pytest.mark.parametrize("query, param", [
    ("since=yesterday", "since"), ("since=2024-13-01", "since"), ("by=key,owner", "by"), ("by=model,model", "by"),
    ("bogus=1", "bogus"),
])
async def test_bad_usage_query(relay, http, query, param):
    assert_error(await call(http, "GET", relay.url + f"/admin/usage?{query}"), 400, param=param)


async def test_usage_of_unknown_key(relay, http):
    assert_error(await call(http, "GET", relay.url + "/admin/usage?key=sk-nope"), 404, "key_not_found")


# -- auth -----------------------------------------------------------------------------------------------------


async def test_every_admin_route_refuses_anything_but_the_admin_token(relay, http):
    k = await create(http, relay, quota_usd=1)
    wrong = [
        {"Authorization": f"Bearer {CLIENT_KEY}"},
        {"Authorization": f"Bearer {k['key']}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"x-api-key": ADMIN_TOKEN},
        {},
    ]
    for method, path in admin_routes(relay):
        url = relay.url + path.replace("{id}", k["id"]).replace("{name}", "fake").replace("{index}", "0")
        for headers in wrong:
            a = await call(http, method, url, {"usd": 1, "name": "x"} if method in ("POST", "PATCH") else None,
                           headers={**headers, "Origin": "https://evil.example"})
            assert_error(a, 401, "invalid_admin_token")
            assert not any(h.lower().startswith("access-control-") for h in a.headers), (path, a.headers)
    # nothing changed
    got = (await call(http, "GET", relay.url + f"/admin/keys/{k['id']}")).json
    assert got["status"] == "active" and got["granted_usd"] == 1 and got["name"] == "test"
    # and a CORS preflight is not answered for /admin
    a = await call(http, "OPTIONS", relay.url + "/admin/keys", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert a.status == 405 and "Access-Control-Allow-Origin" not in a.headers


async def test_admin_disabled_without_token(relay_factory, http):
    relay = await relay_factory()
    for method, path in admin_routes(relay):
        url = relay.url + path.replace("{id}", "cfg-test").replace("{name}", "fake").replace("{index}", "0")
        for headers in ({"Authorization": "Bearer anything"}, {"Authorization": f"Bearer {CLIENT_KEY}"}, {}):
            a = await call(http, method, url, {} if method in ("POST", "PATCH") else None, headers=headers)
            err = assert_error(a, 403, "admin_disabled")
            assert "disabled" in err["message"] and "admin_token" in err["message"]


# -- bad bodies -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, param", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"name": "x", "quota_usd": -1}, "quota_usd"),
    ({"name": "x", "quota_usd": "5"}, "quota_usd"),
    ({"name": "x", "quota_usd": 1, "granted_usd": 1}, "quota_usd"),
    ({"name": "x", "rpm": 0}, "rpm"),
    ({"name": "x", "tpm": 1.5}, "tpm"),
    ({"name": "x", "rpd": "10"}, "rpd"),
    ({"name": "x", "ipm": True}, "ipm"),
    ({"name": "x", "models": "demo"}, "models"),
    ({"name": "x", "models": ["demo", ""]}, "models"),
    ({"name": "x", "expires_at": "soon"}, "expires_at"),
    ({"name": "x", "expires_at": "2001-01-01"}, "expires_at"),
    ({"name": "x", "ip_allow": ["10.0.0.0/33"]}, "ip_allow"),
    ({"name": "x", "ip_allow": "10.0.0.0/8"}, "ip_allow"),
    ({"name": "x", "group": ""}, "group"),
    ({"name": "x", "status": "revoked"}, "status"),
    ({"name": "x", "key": "sk-chosen-by-client"}, "key"),
    ({"name": "x", "spent_usd": 0}, "spent_usd"),
])
async def test_bad_create_body(relay, http, body, param):
    before = len((await call(http, "GET", relay.url + "/admin/keys")).json["data"])
    a = await call(http, "POST", relay.url + "/admin/keys", body)
    assert_error(a, 400, param=param)
    assert a.headers.get("x-should-retry") == "false"
    assert len((await call(http, "GET", relay.url + "/admin/keys")).json["data"]) == before


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"x"', b"\xff"])
async def test_create_body_not_a_json_object(relay, http, raw):
    assert_error(await call(http, "POST", relay.url + "/admin/keys", raw=raw), 400, "invalid_json")


@pytest.mark.parametrize("body, param", [
    ({"status": "paused"}, "status"), ({"rpm": -5}, "rpm"), ({"granted_usd": "lots"}, "granted_usd"),
    ({"id": "key_x"}, "id"), ({"prefix": "sk-x"}, "prefix"), ({"key_hash": "00"}, "key_hash"),
    ({"models": [1]}, "models"),
])
async def test_bad_patch_body(relay, http, body, param):
    k = await create(http, relay, rpm=7)
    a = await call(http, "PATCH", relay.url + f"/admin/keys/{k['id']}", body)
    assert_error(a, 400, param=param)
    got = (await call(http, "GET", relay.url + f"/admin/keys/{k['id']}")).json
    assert got == {**{f: v for f, v in k.items() if f != "key"}}


async def test_patch_unknown_key(relay, http):
    a = await call(http, "PATCH", relay.url + "/admin/keys/sk-none", {"rpm": 1})
    assert_error(a, 404, "key_not_found")
    assert_error(await call(http, "DELETE", relay.url + "/admin/keys/sk-none"), 404, "key_not_found")
    assert_error(await call(http, "POST", relay.url + "/admin/keys/sk-none/topup", {"usd": 1}), 404, "key_not_found")


# -- the OpenAPI document ---------------------------------------------------------------------------------------


async def test_openapi_describes_every_admin_route(relay, http):
    a = await call(http, "GET", relay.url + "/admin/openapi.json")
    assert a.status == 200 and a.headers["Content-Type"].startswith("application/json")
    doc = a.json
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearerAuth": []}]
    schemas = doc["components"]["schemas"]
    assert {"Key", "KeyCreated", "UsageRow", "Error"} <= set(schemas)

    served = admin_routes(relay)
    for method, path in served:
        assert path in doc["paths"], path
        assert method.lower() in doc["paths"][path], (method, path)
    # and nothing documented that is not served
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m in METHODS}
    assert documented == set(served)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref

    for path, item in doc["paths"].items():
        templated = set(re.findall(r"\{(\w+)\}", path))
        for method in (m for m in item if m in METHODS):
            op = item[method]
            assert op["operationId"] and op["summary"]
            params = item.get("parameters", []) + op.get("parameters", [])
            assert {p["name"] for p in params if p["in"] == "path"} == templated, path
            assert all(p["required"] for p in params if p["in"] == "path")
            assert any(s.startswith("2") for s in op["responses"]), (method, path)
            assert "401" in op["responses"]
            for status, resp in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status) and resp["description"]
                if not status.startswith("2"):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if method in ("post", "patch") and "requestBody" in op:
                assert "application/json" in op["requestBody"]["content"]
    assert "requestBody" in doc["paths"]["/admin/keys"]["post"]
    assert "requestBody" in doc["paths"]["/admin/keys/{id}"]["patch"]
    assert "requestBody" in doc["paths"]["/admin/keys/{id}/topup"]["post"]
    assert {p["name"] for p in doc["paths"]["/admin/usage"]["get"]["parameters"]} == {"key", "since", "by"}

    # the Key schema names exactly what the API returns
    k = await create(http, relay)
    assert set(schemas["Key"]["properties"]) == set(k) - {"key"}
    assert set(schemas["Error"]["properties"]["error"]["properties"]) == ERROR_FIELDS


async def test_openapi_needs_the_token(relay, http):
    assert_error(await call(http, "GET", relay.url + "/admin/openapi.json", headers={}), 401)
