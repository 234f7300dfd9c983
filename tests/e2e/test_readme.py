"""The README's first steps, run as a newcomer runs them: `make run`, then its curl, its SDK snippet, its
key commands and its admin call, each as written (the port and the config file's path put in, so the
test does not take 8080 or write into the checkout)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT
from tests.procs import free_port

README = (ROOT / "README.md").read_text()
PY = str(ROOT / ".venv" / "bin" / "python")

if not (ROOT / ".venv" / "bin" / "relay").exists():
    pytest.skip("the README's commands use .venv (made by `make install`)", allow_module_level=True)


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def block_with(lang: str, text: str) -> str:
    found = [b for b in blocks(lang) if text in b]
    assert found, f"no ```{lang} block in README.md holds {text!r}"
    return found[0]


class Newcomer:
    def __init__(self, tmp: Path) -> None:
        self.port, self.demo_port = free_port(), free_port()
        self.config = tmp / "config.yaml"
        shutil.copy(ROOT / "config.yaml", self.config)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("RELAY_")},
            "RELAY_PORT": str(self.port), "RELAY_DEMO_UPSTREAM": f"http://127.0.0.1:{self.demo_port}/v1",
            "RELAY_ADMIN_TOKEN": "adm-" + os.urandom(16).hex(),
        }

    def as_written(self, command: str) -> str:
        return command.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}").replace(
            "--config config.yaml", f"--config {self.config}")

    def sh(self, command: str) -> str:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", self.as_written(command)], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
        return out.stdout


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[Newcomer]:
    n = Newcomer(tmp_path)
    quick = block_with("sh", "make run")
    assert "export RELAY_ADMIN_TOKEN" in quick  # the quick start shows the admin token
    log = open(tmp_path / "make-run.log", "wb")
    proc = subprocess.Popen(
        ["make", "run", f"CONFIG={n.config}", f"DEMO_UPSTREAM_PORT={n.demo_port}"], cwd=ROOT, env=n.env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()
            relay = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{n.port}/healthz"], capture_output=True)
            demo = subprocess.run(["curl", "-sf", "-H", "Authorization: Bearer x",
                                   f"http://127.0.0.1:{n.demo_port}/v1/models"], capture_output=True)
            if relay.returncode == 0 and demo.returncode == 0:
                break
            assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()
            time.sleep(0.1)
        yield n
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and what it started: the relay and the demo upstream
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


async def test_the_readme_first_steps_work_as_written(newcomer: Newcomer) -> None:
    n = newcomer
    answer = orjson.loads(n.sh(block_with("sh", "curl http://127.0.0.1:8080/v1/chat/completions")))
    assert answer["choices"][0]["message"]["content"]

    snippet = n.as_written(block_with("python", "from openai import OpenAI"))
    out = await asyncio.to_thread(subprocess.run, [PY, "-c", snippet], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr

    keys = block_with("sh", "keys create").splitlines()
    create = " ".join(line.split("#")[0].rstrip().rstrip("\\") for line in keys[:2])
    secret = n.sh(create).strip().splitlines()[-1]
    assert secret.startswith("sk-")
    chat = block_with("sh", "curl http://127.0.0.1:8080/v1/chat/completions").replace("sk-relay-demo", secret)
    # the first example key works from localhost, once the running relay picked it up ("within a second")
    deadline = time.monotonic() + 5
    while "choices" not in (answer := orjson.loads(n.sh(chat))):
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.2)
    listed = n.sh(keys[2].split("#")[0])
    prefix = secret[:7]
    assert prefix in listed
    n.sh(keys[3].split("#")[0].replace("KEY", prefix))
    usage = n.sh(keys[5].split("#")[0].replace(" [--key KEY] [--since 2030-01-01]", ""))
    assert "$" in usage and re.search(r"\$0\.0*[1-9]", usage), usage  # the demo model has a price: costs show

    created = orjson.loads(n.sh(block_with("sh", "/admin/keys")))
    assert created["key"].startswith("sk-") and created["name"] == "team-a"
