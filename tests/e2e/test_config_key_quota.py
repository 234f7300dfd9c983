"""A config.yaml key's quota_usd: its starting balance, charged like any key's, kept across restarts."""

from __future__ import annotations

import aiohttp

from relay.config import parse_config
from tests.conftest import CLIENT_KEY, RelayFactory, read_ledger, wait_ledger
from tests.e2e.test_admin import ADMIN_TOKEN, call


async def test_config_key_quota_is_its_balance(relay_factory: RelayFactory, tmp_path) -> None:
    db = str(tmp_path / "q.db")
    keys = [{"name": "test", "key": CLIENT_KEY, "quota_usd": 0.001}]
    relay = await relay_factory(database=db, client_keys=keys, admin_token=ADMIN_TOKEN)
    body = {"model": "demo", "max_tokens": 10, "messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(relay.v1 + "/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as resp:
            assert resp.status == 200
        rows = await wait_ledger(db, 1)
        assert rows[0]["cost_usd"] > 0
        k = (await call(http, "GET", relay.url + "/admin/keys/cfg-test")).json
        assert k["granted_usd"] == 0.001 and k["spent_usd"] == rows[0]["cost_usd"]
        # a top-up survives a restart: the config's figure is where the key starts, not what it is reset to
        assert (await call(http, "POST", relay.url + "/admin/keys/cfg-test/topup", {"usd": 1})).status == 200
    again = await relay_factory(database=db, client_keys=keys, admin_token=ADMIN_TOKEN)
    async with aiohttp.ClientSession() as http:
        k = (await call(http, "GET", again.url + "/admin/keys/cfg-test")).json
    assert k["granted_usd"] == 1.001
    assert len(read_ledger(db)) == 1


def test_quota_from_the_environment() -> None:
    raw = {"client_keys": [{"name": "d", "key": "sk-x", "quota_usd": "${Q:-1}"}]}
    assert parse_config(raw, {}).client_keys[0].quota_usd == 1.0
    assert parse_config(raw, {"Q": ""}).client_keys[0].quota_usd == 1.0
    assert parse_config({"client_keys": [{"name": "d", "key": "sk-x"}]}, {}).client_keys[0].quota_usd is None
