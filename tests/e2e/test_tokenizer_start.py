"""`relay serve` with a tokenizer it cannot trust: one line on stderr, status 2, nothing started.

Billing counts come from the tokenizer; a damaged rank file, a missing tiktoken or one that counts
differently must stop the relay at start, never fall back to an estimate.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLIENT_KEY
from tests.procs import ROOT, free_port

BROKEN = {
    "counts-differently": (
        "import tiktoken\n"
        "tiktoken.Encoding.encode_ordinary = lambda self, text: [0] * (len(text.encode()) // 4)",
        "OpenAI's tokenizer as",
    ),
    "tiktoken-missing": ("sys.modules['tiktoken'] = None", "tiktoken is not installed"),
    "damaged-rank-file": (
        "import pathlib, shutil, tempfile, relay.tokenizer as t\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "shutil.copy(t.data_dir() / 'cl100k_base.tiktoken', d)\n"
        "(d / 'o200k_base.tiktoken').write_bytes(b'IQ== 0\\n')\n"
        "t.data_dir = lambda: d",
        "is not OpenAI's o200k_base rank file",
    ),
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_serve_refuses_to_start_with_a_broken_tokenizer(tmp_path: Path, case: str, workers: str) -> None:
    patch, says = BROKEN[case]
    db = tmp_path / "relay.db"
    cfg = {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "database": str(db),
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],
        "channels": [{"name": "fake", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                      "keys": ["acct-0"], "models": ["demo"]}],
        "prices": {"demo": {"free": True}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = (
        f"import sys\n{patch}\nfrom relay.cli import main\n"
        f"sys.exit(main(['serve', '--config', {str(path)!r}, '--workers', {workers!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("relay: config error: tokenizer: "), lines[0]
    assert says in lines[0], lines[0]
    assert not db.exists()  # nothing was started, not even the database
