"""`relay channels test --config PATH [NAME]` as a real subprocess against the fake upstream: a table of
every account's probe, exit 0 when all pass, 1 when one fails, 2 for an unknown channel; never a key."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import yaml

from bench.fake_upstream import status
from tests.conftest import ROOT, Upstream, relay_config


async def channels_test(config: Path, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "channels", "test", "--config", str(config), *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, upstream: Upstream) -> Path:
    raw = relay_config(upstream.url, str(tmp_path / "relay.db"))
    raw["channels"].append({"name": "spare", "type": "openai", "base_url": upstream.url, "keys": ["spare-0"],
                            "models": ["demo"], "test_model": "gpt-4o-mini"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def test_channels_test_prints_a_table_and_exits_by_the_outcome(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, upstream)
    code, out, err = await channels_test(config)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["channel", "account", "state", "ok", "status", "latency_ms", "error"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("fake", "0", "active", "yes", "200"), ("fake", "1", "active", "yes", "200"),
        ("fake", "2", "active", "yes", "200"), ("spare", "0", "active", "yes", "200")]
    probed = [r.json()["model"] for r in upstream.records if r.key == "spare-0"]
    assert probed == ["gpt-4o-mini"]  # the channel's test_model

    upstream.options.key_answers["acct-1"] = status(401)
    code, out, _ = await channels_test(config, "fake")
    assert code == 1
    rows = [line.split(None, 6) for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["fake"] * 3
    assert rows[1][:5] == ["fake", "1", "out", "no", "401"] and rows[1][6] == "HTTP 401 invalid_api_key"
    assert "acct-" not in out

    code, out, err = await channels_test(config, "nope")
    assert code == 2 and out == "" and err.strip() == "relay: no channel named 'nope' (channels with keys: fake, spare)"
