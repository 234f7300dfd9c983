"""Channels at run time through /admin/channels: added, changed and removed under load with no failed
request, keys never shown nor stored in clear, RELAY_SECRET required for them, accounts turned off and on
(and still off after a restart), config.yaml seeding, one schema for checks and the OpenAPI document."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from bench import fake_upstream as fake
from tests.conftest import CLIENT_KEY, MODELS, ROOT, Upstream, relay_config
from tests.fakes.http_proxy import ForwardProxy

ADMIN_TOKEN = "adm-" + "7a1e3c5b" * 4
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
SECRET = "relay-secret-for-tests-" + "0123456789abcdef" * 2
CANARY = "sk-canary-" + "Zq8Wm3Xv" * 5
MSGS = [{"role": "user", "content": "Hello"}]
PRICES = {"live-model": {"free": True}, "live-2": {"free": True}}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    return SECRET


@pytest.fixture
async def second(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    app = fake.build_app(fake.FakeOptions())
    return Upstream(await aiohttp_server(app), app)


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str | None:
        return self.json["error"]["code"] if self.status >= 400 else None


class Admin:
    """Admin calls that keep every answer's bytes, to check none holds a key."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.seen = http, url, []  # type: list[bytes]

    async def __call__(self, method: str, path: str, body: Any = None) -> Answer:
        data = None if body is None else orjson.dumps(body)
        async with self.http.request(method, self.url + path, data=data, headers=ADMIN) as resp:
            a = Answer(resp.status, await resp.read())
        self.seen.append(a.body)
        return a


async def chat(http: aiohttp.ClientSession, url: str, model: str) -> Answer:
    async with http.post(url + "/v1/chat/completions", json={"model": model, "messages": MSGS}, headers=CLIENT) as r:
        return Answer(r.status, await r.read())


async def ok(http: aiohttp.ClientSession, url: str, model: str) -> bool:
    return (await chat(http, url, model)).status == 200


async def until(check: Callable[[], Any], timeout: float = 1.0) -> float:
    """Seconds until `check` (a function, or a coroutine function) holds; fails after `timeout`."""
    start = time.monotonic()
    while not (await got if asyncio.iscoroutine(got := check()) else got):
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def channel(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "live", "type": "openai", "base_url": url, "keys": [CANARY], "models": ["live-model"], **extra}


def served_keys(up: Upstream, since: int = 0) -> set[str | None]:
    return {r.key for r in up.records[since:]}


# -- added, changed, removed under load -----------------------------------------------------------------------


async def test_channel_added_changed_and_removed_under_load(relay_factory, upstream, second, http, secret):
    relay = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES)
    admin = Admin(http, relay.url)
    assert (await chat(http, relay.url, "live-model")).code == "model_not_found"
    a = await admin("POST", "/admin/channels", channel(second.url))
    assert a.status == 201, a.body
    assert (await chat(http, relay.url, "live-model")).status == 200  # at once in the process that took it

    results: list[tuple[float, float, int, str | None]] = []
    stop = asyncio.Event()

    async def client(model: str) -> None:
        while not stop.is_set():
            started = time.monotonic()
            r = await chat(http, relay.url, model)
            results.append((started, time.monotonic(), r.status, r.code))

    async def more(n: int) -> None:  # the load goes on until n more requests are answered
        goal = len(results) + n
        while len(results) < goal:
            await asyncio.sleep(0.01)

    clients = [asyncio.create_task(client("live-model")) for _ in range(6)]
    try:
        await more(80)
        seen = len(upstream.records)
        assert (await admin("PATCH", "/admin/channels/live", {"base_url": upstream.url})).status == 200
        await until(lambda: CANARY in served_keys(upstream, seen))
        await more(80)
        assert (await admin("PATCH", "/admin/channels/live", {"models": ["live-model", "live-2"]})).status == 200
        await until(lambda: ok(http, relay.url, "live-2"))
        await more(80)
        deleted_at = time.monotonic()
        assert (await admin("DELETE", "/admin/channels/live")).status == 200
        await more(40)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert len(results) >= 280
    before = [r for r in results if r[1] < deleted_at]
    assert before and all(status == 200 for _, _, status, _ in before), {r[2:] for r in before}
    after = [r for r in results if r[1] >= deleted_at]
    assert all(status == 200 or code == "model_not_found" for _, _, status, code in after), {r[2:] for r in after}
    assert any(code == "model_not_found" for *_, code in after)  # it stopped
    assert (await chat(http, relay.url, "live-2")).code == "model_not_found"
    async with http.get(relay.url + "/metrics") as resp:  # the metrics' model labels followed the reload
        assert 'model="live-model"' in await resp.text()
    models = await (await http.get(relay.url + "/v1/models", headers=CLIENT)).json()
    assert "live-model" not in {m["id"] for m in models["data"]}
    assert not any(CANARY.encode() in b for b in admin.seen)



# -- keys never shown, never stored in clear ------------------------------------------------------------------


def file_bytes(database: str) -> bytes:
    """The database as a copy of it would hold it: the file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in Path(database).parent.glob(Path(database).name + "*"))


async def test_no_answer_and_no_database_byte_holds_a_key(relay_factory, upstream, http, secret):
    relay = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES)
    admin = Admin(http, relay.url)
    second_key = CANARY[::-1]
    forward = ForwardProxy(auth=("user", "pw-" + CANARY[10:]))  # the channel's egress: its password a secret too
    where = (await forward.start()).removeprefix("http://")
    proxy = "http://user:pw-" + CANARY[10:] + "@" + where
    a = await admin("POST", "/admin/channels", channel(upstream.url, headers={"X-Extra": CANARY + "-h"}, proxy=proxy))
    assert a.status == 201, a.body
    assert [acc["prefix"] for acc in a.json["accounts"]] == [CANARY[:7]]
    assert a.json["header_names"] == ["X-Extra"] and a.json["proxy"] == f"http://user:***@{where}"
    assert (await chat(http, relay.url, "live-model")).status == 200
    assert upstream.records[-1].key == CANARY and upstream.records[-1].headers["X-Extra"] == CANARY + "-h"
    statuses = []
    for method, path, body in [
        ("GET", "/admin/channels", None), ("GET", "/admin/channels/live", None),
        ("PATCH", "/admin/channels/live", {"keys": [CANARY, second_key], "weight": 3}),
        ("POST", "/admin/channels/live/accounts/1/disable", None),
        ("POST", "/admin/channels/live/accounts/1/enable", None),
        ("POST", "/admin/channels", channel(upstream.url)),  # 409: exists
        ("PATCH", "/admin/channels/live", {"keys": [CANARY, 7]}),  # 400
        ("GET", "/admin/openapi.json", None),
    ]:
        statuses.append((await admin(method, path, body)).status)
    assert statuses == [200, 200, 200, 200, 200, 409, 400, 200] and len(admin.seen) == 9
    for body in admin.seen:
        assert CANARY.encode() not in body and second_key.encode() not in body and CANARY[10:].encode() not in body
    for _i in range(4):
        assert (await chat(http, relay.url, "live-model")).status == 200
    assert {r.key for r in upstream.records[-4:]} == {CANARY, second_key}
    await admin("DELETE", "/admin/channels/live")
    assert forward.log and all(e.authorized for e in forward.log)  # the traffic went through the proxy
    await forward.close()
    raw = file_bytes(relay.database)
    assert b"live-model" in raw  # the settings are there, in clear
    for secret_text in (CANARY, second_key, CANARY[10:], CANARY[:20]):
        assert secret_text.encode() not in raw


async def test_without_relay_secret_keys_are_refused_saying_why(relay_factory, upstream, http, monkeypatch):
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    relay = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES)
    assert (await Admin(http, relay.url)("POST", "/admin/channels", channel(upstream.url))).status == 201
    # a new relay on the same database, as after a restart
    monkeypatch.delenv("RELAY_SECRET")
    plain = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES, database=relay.database)
    admin = Admin(http, plain.url)
    a = await admin("POST", "/admin/channels", {**channel(upstream.url), "name": "other"})
    assert a.status == 409 and a.code == "relay_secret_required" and "RELAY_SECRET must be set" in a.json["error"]["message"]
    a = await admin("PATCH", "/admin/channels/live", {"keys": ["sk-new-" + "x" * 30]})
    assert a.status == 409 and a.code == "relay_secret_required"
    # the channel may still be changed where no secret is involved; its keys are not readable here
    a = await admin("PATCH", "/admin/channels/live", {"weight": 5})
    assert a.status == 200 and a.json["weight"] == 5 and a.json["secrets_readable"] is False
    assert a.json["accounts"] == [{"index": 0, "prefix": None, "enabled": True}]
    assert (await chat(http, plain.url, "live-model")).code == "model_not_found"  # not served without its keys
    assert (await chat(http, plain.url, "demo")).status == 200


async def test_a_wrong_relay_secret_is_one_line_and_the_rest_serves(relay_factory, upstream, http, monkeypatch, caplog):
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    relay = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES)
    assert (await Admin(http, relay.url)("POST", "/admin/channels", channel(upstream.url))).status == 201
    monkeypatch.setenv("RELAY_SECRET", "another-secret-of-enough-length-" + "9" * 8)
    caplog.clear()
    other = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES, database=relay.database)
    lines = [r.getMessage() for r in caplog.records if "live" in r.getMessage()]
    assert lines == ["channel live: its keys cannot be decrypted (cannot be opened with this RELAY_SECRET "
                     "(was it changed?)): not served"]
    assert (await chat(http, other.url, "live-model")).code == "model_not_found"
    assert (await chat(http, other.url, "demo")).status == 200
    got = await Admin(http, other.url)("GET", "/admin/channels/live")
    assert got.status == 200 and got.json["secrets_readable"] is False


async def test_a_too_short_relay_secret_stops_the_start(relay_factory, monkeypatch):
    monkeypatch.setenv("RELAY_SECRET", "short")
    with pytest.raises(Exception, match="RELAY_SECRET must be at least 32 characters"):
        await relay_factory(admin_token=ADMIN_TOKEN)


# -- accounts turned off and on ---------------------------------------------------------------------------------


async def test_an_account_turned_off_leaves_rotation_and_stays_off_after_a_restart(relay_factory, upstream, http):
    relay = await relay_factory(admin_token=ADMIN_TOKEN)  # the config's channel "fake": acct-0, acct-1, acct-2
    admin = Admin(http, relay.url)

    async def used(url: str, n: int = 9) -> set[str | None]:
        seen = len(upstream.records)
        for _ in range(n):
            assert (await chat(http, url, "demo")).status == 200
        return served_keys(upstream, seen)

    assert await used(relay.url) == {"acct-0", "acct-1", "acct-2"}
    a = await admin("POST", "/admin/channels/fake/accounts/1/disable")
    assert a.status == 200 and [x["enabled"] for x in a.json["accounts"]] == [True, False, True]
    assert await used(relay.url) == {"acct-0", "acct-2"}
    assert (await admin("POST", "/admin/channels/fake/accounts/1/enable")).status == 200
    assert await used(relay.url) == {"acct-0", "acct-1", "acct-2"}
    assert (await admin("POST", "/admin/channels/fake/accounts/2/disable")).status == 200
    assert (await admin("POST", "/admin/channels/fake/accounts/3/disable")).code == "account_not_found"
    assert (await admin("POST", "/admin/channels/nope/accounts/0/disable")).code == "channel_not_found"
    # a new relay on the same database, as after a restart
    again = await relay_factory(admin_token=ADMIN_TOKEN, database=relay.database)
    assert await used(again.url) == {"acct-0", "acct-1"}
    # a channel of config.yaml is changed there, not here
    assert (await Admin(http, again.url)("PATCH", "/admin/channels/fake", {"weight": 2})).code == "channel_from_config"
    assert (await Admin(http, again.url)("DELETE", "/admin/channels/fake")).code == "channel_from_config"


# -- config.yaml seeds the store ------------------------------------------------------------------------------


async def test_a_channel_removed_from_config_is_gone_after_a_restart_and_api_channels_stay(
    relay_factory, upstream, http, secret,
):
    chans = [
        {"name": "fake", "type": "openai", "base_url": upstream.url, "keys": ["acct-0"], "models": ["demo"]},
        {"name": "extra", "type": "openai", "base_url": upstream.url, "keys": ["acct-9"], "models": ["gpt-4o-mini"]},
    ]
    relay = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES, channels=chans)
    admin = Admin(http, relay.url)
    assert (await admin("POST", "/admin/channels", channel(upstream.url))).status == 201
    names = [(c["name"], c["source"]) for c in (await admin("GET", "/admin/channels")).json["data"]]
    assert names == [("fake", "config"), ("extra", "config"), ("live", "api")]
    assert (await chat(http, relay.url, "gpt-4o-mini")).status == 200
    # a new relay on the same database, as after a restart
    again = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES, channels=chans[:1], database=relay.database)
    admin = Admin(http, again.url)
    names = [(c["name"], c["source"]) for c in (await admin("GET", "/admin/channels")).json["data"]]
    assert names == [("fake", "config"), ("live", "api")]
    assert (await chat(http, again.url, "gpt-4o-mini")).code == "model_not_found"
    assert (await chat(http, again.url, "live-model")).status == 200
    assert (await admin("GET", "/admin/channels/extra")).code == "channel_not_found"


# -- one schema: checks, errors and the OpenAPI document -------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"base_url": "ftp://x"}, "base_url"),
    ({"type": "nope"}, "type"),
    ({"models": []}, "models"),
    ({"weight": 0}, "weight"),
    ({"keys": []}, "keys"),
    ({"rpm": "many"}, "rpm"),
    ({"colour": "red"}, "colour"),
])
async def test_bad_channel_fields_are_named(relay_factory, upstream, http, secret, body, param):
    relay = await relay_factory(admin_token=ADMIN_TOKEN)
    a = await Admin(http, relay.url)("POST", "/admin/channels", {**channel(upstream.url), **body})
    assert a.status == 400 and a.json["error"]["param"] == param, a.body
    assert a.json["error"]["message"].startswith(f"'{param}' ")


async def test_openapi_lists_the_channel_routes_and_its_schemas_validate_the_answers(
    relay_factory, upstream, http, secret,
):
    relay = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES)
    admin = Admin(http, relay.url)
    doc = (await admin("GET", "/admin/openapi.json")).json
    for path in ("/admin/channels", "/admin/channels/{name}", "/admin/channels/{name}/accounts/{index}/enable",
                 "/admin/channels/{name}/accounts/{index}/disable"):
        assert path in doc["paths"]
    assert "/admin/keys" in doc["paths"]

    def check(instance: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(instance)

    body = channel(upstream.url, model_map={"live-model": "gpt-4o-mini"}, rpm=100, headers={"X-A": "b"})
    check(body, "ChannelCreate")
    with pytest.raises(jsonschema.ValidationError):
        check({**body, "weight": 0}, "ChannelCreate")
    with pytest.raises(jsonschema.ValidationError):
        check({"name": "x"}, "ChannelUpdate")  # the name is fixed once created
    created = await admin("POST", "/admin/channels", body)
    check(created.json, "Channel")
    check((await admin("GET", "/admin/channels/live")).json, "Channel")
    check((await admin("PATCH", "/admin/channels/live", {"enabled": False})).json, "Channel")
    for c in (await admin("GET", "/admin/channels")).json["data"]:
        check(c, "Channel")
    check((await admin("POST", "/admin/channels/fake/accounts/0/disable")).json, "Channel")
    check((await admin("DELETE", "/admin/channels/live")).json, "ChannelDeleted")
    check((await admin("GET", "/admin/channels/live")).json, "Error")
    check((await admin("POST", "/admin/channels", {"name": "y"})).json, "Error")
    # the key routes' schemas come from the same specs (relay/admin_schema.py's KEY_FIELDS)
    key_body = {"name": "k", "quota_usd": 5, "rpm": 10, "models": ["demo"], "ip_allow": ["10.0.0.0/8"],
                "expires_at": "2099-01-01"}
    check(key_body, "KeyCreate")
    key = await admin("POST", "/admin/keys", key_body)
    check(key.json, "KeyCreated")
    check((await admin("PATCH", f"/admin/keys/{key.json['id']}", {"status": "revoked"})).json, "Key")
    with pytest.raises(jsonschema.ValidationError):
        check({"name": "k", "status": "revoked"}, "KeyCreate")  # a new key is active
    assert (await admin("POST", "/admin/keys", {"name": "k", "status": "revoked"})).status == 400


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("field", "value"), [
    ("base_url", "ftp://x"), ("type", "nope"), ("models", []), ("weight", 0), ("weight", 5000), ("rpm", 0),
    ("priority", 10**9), ("proxy", "socks://x"),
])
async def test_config_and_admin_api_refuse_a_bad_channel_with_the_same_words(
    relay_factory, upstream, http, secret, tmp_path, field, value,
):
    """config.yaml (read by `relay channels list`) and POST /admin/channels share one schema."""
    relay = await relay_factory(admin_token=ADMIN_TOKEN)
    a = await Admin(http, relay.url)("POST", "/admin/channels", {**channel(upstream.url), field: value})
    assert a.status == 400 and a.json["error"]["param"] == field
    api_words = a.json["error"]["message"].removeprefix(f"'{field}' ").rstrip(".")
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(relay_config(upstream.url, str(tmp_path / "c.db"), channels=[
        {"name": "bad", "base_url": upstream.url, "keys": ["k"], "models": ["demo"], field: value}])))
    code, _, err = await cli("channels", "list", "--config", str(config))
    assert code == 2 and err.strip() == f"relay: config error: channels[0].{field}: {api_words}", err


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("--expires", "next tuesday", "expires_at"), ("--expires", "2001-01-01", "expires_at"),
    ("--ip", "10.0.0.300", "ip_allow"), ("--group", " ", "group"),
])
async def test_cli_and_admin_api_refuse_a_bad_key_with_the_same_words(
    relay_factory, upstream, http, tmp_path, flag, value, field,
):
    """`relay keys create` and POST /admin/keys call one key service (relay/keys.py)."""
    relay = await relay_factory(admin_token=ADMIN_TOKEN)
    body: dict[str, Any] = {"name": "k", field: [value] if field == "ip_allow" else value}
    a = await Admin(http, relay.url)("POST", "/admin/keys", body)
    assert a.status == 400 and a.json["error"]["param"] == field, a.body
    api_words = a.json["error"]["message"].removeprefix(f"'{field}' ")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(relay_config(upstream.url, relay.database)))
    code, _, err = await cli("keys", "create", "--config", str(config), "--name", "k", flag, value)
    assert code == 2 and err.strip() == f"relay: {flag}: {api_words}", err


async def test_channels_list_shows_config_and_api_channels(relay_factory, upstream, http, secret, tmp_path):
    relay = await relay_factory(admin_token=ADMIN_TOKEN, prices=PRICES)
    admin = Admin(http, relay.url)
    assert (await admin("POST", "/admin/channels", channel(upstream.url, keys=[CANARY, CANARY + "2"]))).status == 201
    assert (await admin("POST", "/admin/channels/live/accounts/0/disable")).status == 200
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(relay_config(upstream.url, relay.database)))
    code, out, err = await cli("channels", "list", "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "BASE_URL", "MODELS", "ACCOUNTS", "SOURCE", "ENABLED"]
    assert lines[1].split() == ["fake", "openai", upstream.url, ",".join(MODELS), "3", "(3", "enabled)", "config", "yes"]
    assert lines[2].split() == ["live", "openai", upstream.url, "live-model", "2", "(1", "enabled)", "api", "yes"]
    assert CANARY not in out
    code, out, _ = await cli("channels", "list", "--config", str(config), "--json")
    assert code == 0 and [orjson.loads(x)["name"] for x in out.splitlines()] == ["fake", "live"] and CANARY not in out
