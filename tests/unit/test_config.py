"""config.yaml: environment substitution, defaults, and errors that name the YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, load_config, mask_proxy, parse_config

BASE = """
server: {host: 127.0.0.1, port: ${PORT:-8080}}
database: data/relay.db
client_keys:
  - {name: a, key: sk-abc}
  - {name: unset, key: "${NOT_SET_KEY}"}
channels:
  - name: main
    type: openai
    base_url: https://api.example.com/v1/
    keys: [${K1}, ${K2}]
    models: [gpt-4o]
    model_map: {gpt-4o: gpt-4o-2024-08-06}
    weight: 2
    priority: 1
  - name: spare
    base_url: https://x.example/v1
    keys: [${MISSING_KEY}]
    models: [m]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_contract_example_loads_with_env(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env={"K1": "sk-one", "K2": "", "PORT": "9000"})
    assert cfg.server.port == 9000
    assert cfg.database == str(tmp_path / "data" / "relay.db")
    (ch,) = cfg.channels
    assert ch.keys == ("sk-one",) and ch.base_url == "https://api.example.com/v1"
    assert ch.upstream_model("gpt-4o") == "gpt-4o-2024-08-06" and (ch.weight, ch.priority) == (2, 1)
    assert cfg.skipped_channels == ("spare",)
    assert [k.name for k in cfg.client_keys] == ["a"]
    assert "sk-abc" not in repr(cfg.client_keys)


def test_default_substitution(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env={"K1": "x"})
    assert cfg.server.port == 8080


def test_shipped_config_loads_without_any_provider_key() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "config.yaml", env={})
    assert [c.name for c in cfg.channels] == ["demo"]
    assert "demo" in cfg.channels[0].models


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"channels": [{"name": "a", "type": "foo", "base_url": "http://x", "keys": ["k"], "models": ["m"]}]}, "channels[0].type"),
        ({"channels": [{"name": "a", "base_url": "ftp://x", "keys": ["k"], "models": ["m"]}]}, "channels[0].base_url"),
        ({"channels": [{"name": "a", "base_url": "http://x", "keys": ["k"], "models": []}]}, "channels[0].models"),
        ({"channels": [{"name": "a", "base_url": "http://x", "keys": ["k"], "models": ["m"], "weight": "two"}]}, "channels[0].weight"),
        ({"channels": [{"base_url": "http://x", "keys": ["k"], "models": ["m"]}]}, "channels[0].name"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"timeouts": {"idle": "soon"}}, "timeouts.idle"),
        ({"channels": {"a": 1}}, "channels"),
        ({"client_keys": [{"name": "x", "sha256": "abc"}]}, "client_keys[0].sha256"),
        ({"log_level": "loud"}, "log_level"),
        ({"limits": {"backend": "memcached"}}, "limits.backend"),
        ({"limits": {"redis_url": "http://127.0.0.1:6379"}}, "limits.redis_url"),
        ({"limits": {"sync_interval": 5}}, "limits.sync_interval"),
        ({"limits": {"sync_interval": "often"}}, "limits.sync_interval"),
        ({"limits": {"prefix": "my relay:"}}, "limits.prefix"),
        ({"prices": {"m": {"input": -1}}}, "prices.m.input"),
        ({"prices": {"m": {"per_token": 1}}}, "prices.m.per_token"),
        ({"billing": {"groups": {"vip": "cheap"}}}, "billing.groups.vip"),
    ],
)
def test_errors_name_the_yaml_path(raw: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, {})
    assert str(e.value).startswith(path + ":")
    assert "\n" not in str(e.value)


def test_shared_state_options() -> None:
    assert (parse_config({}, {}).limits.prefix, parse_config({}, {}).limits.sync_interval) == ("relay:", 0.25)
    lm = parse_config({"limits": {"backend": "redis", "prefix": "team-a:", "sync_interval": 0.5}}, {}).limits
    assert (lm.prefix, lm.sync_interval) == ("team-a:", 0.5)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "server: [1,"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


def test_database_may_be_a_postgresql_url_with_its_password_from_the_environment(tmp_path: Path) -> None:
    text = BASE.replace("database: data/relay.db", "database: postgresql://relay:${PGPASS}@db.internal:5432/relay")
    cfg = load_config(write(tmp_path, text), env={"K1": "x", "PGPASS": "pw"})
    assert cfg.database == "postgresql://relay:pw@db.internal:5432/relay"  # not made relative to the config file
    short = load_config(write(tmp_path, text.replace("postgresql://", "postgres://")), env={"K1": "x", "PGPASS": "pw"})
    assert short.database == "postgres://relay:pw@db.internal:5432/relay"
    with pytest.raises(ConfigError, match=r"^database: .*not a mysql:// URL"):
        load_config(write(tmp_path, text.replace("postgresql://", "mysql://")), env={"K1": "x", "PGPASS": "pw"})


def _channel(**extra: object) -> dict[str, object]:
    return {"channels": [{"name": "c", "base_url": "https://api.example.com/v1", "keys": ["k"], "models": ["m"], **extra}]}


def test_channel_proxy_and_rerank_path() -> None:
    cfg = parse_config(_channel(proxy="http://u:p%40ss@proxy.internal:3128", rerank_path="/v2/rerank"), env={})
    ch = cfg.channels[0]
    assert ch.proxy == "http://u:p%40ss@proxy.internal:3128" and ch.rerank_path == "/v2/rerank"
    assert "p%40ss" not in repr(ch) and "p%40ss" not in repr(cfg)
    assert mask_proxy(ch.proxy) == "http://***@proxy.internal:3128"
    assert mask_proxy("http://proxy.internal:3128") == "http://proxy.internal:3128"
    assert parse_config(_channel(proxy="env"), env={}).channels[0].proxy == "env"
    assert parse_config(_channel(), env={}).channels[0].proxy is None


@pytest.mark.parametrize("proxy", ["socks5://u:hunter2@h:1", "http://u:hunter2@h:notaport", "hunter2", "http://u:hunter2@h:1/x"])
def test_a_bad_proxy_is_refused_without_echoing_it(proxy: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_channel(proxy=proxy), env={})
    assert str(e.value).startswith("channels[0].proxy:") and "hunter2" not in str(e.value)


def test_per_request_price_and_a_bad_rerank_path() -> None:
    cfg = parse_config({"prices": {"rr": {"per_request": 0.002}}}, env={})
    assert cfg.prices["rr"].per_request == 0.002
    with pytest.raises(ConfigError, match=r"channels\[0\].rerank_path"):
        parse_config(_channel(rerank_path="rerank"), env={})


def test_ledger_journal_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env={})
    assert cfg.ledger.journal is True and cfg.ledger.journal_dir is None  # default: by the database
    cfg = load_config(write(tmp_path, BASE + "ledger: {journal: false, journal_dir: var/journal}\n"), env={})
    assert cfg.ledger.journal is False
    assert cfg.ledger.journal_dir == str((tmp_path / "var" / "journal").resolve())  # relative to the config file
    with pytest.raises(ConfigError, match=r"^ledger\.journal: "):
        parse_config({"ledger": {"journal": "sometimes"}}, {})


def test_access_log_off_as_yaml_writes_it() -> None:
    import yaml

    assert parse_config(yaml.safe_load("access_log: off"), {}).access_log == "off"  # YAML's false
    assert parse_config(yaml.safe_load("access_log: json"), {}).access_log == "json"
    assert parse_config({}, {}).access_log == "text"
    with pytest.raises(ConfigError, match="access_log"):
        parse_config({"access_log": "loud"}, {})
