"""The tokenizer alone: load time and memory in a fresh process, and counting speed (no sockets).

    python -m bench.tokenizer          # prints one JSON object

Each figure is the median of `--rounds` fresh processes (load time and memory depend on what else the
machine is doing). Counting: a long mixed text (English prose, code, Chinese) counted whole, and the
16 KiB batches a streamed completion is counted in (relay.tokens.CompletionCounter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, random, time
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss_mb()
started = time.perf_counter()
from relay import tokens
imported = time.perf_counter()
tokens.preload()
loaded = time.perf_counter()
out = {"import_s": imported - started, "load_s": loaded - imported, "rss_added_mb": rss_mb() - before}
rng = random.Random(1)
words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog.", "def", "f(x):", "return", "x**2",
         "你好", "世界", "今天", "12345", "it's", "\n", "\n\n    "]
text = " ".join(rng.choice(words) for _ in range(300_000))
batch = text[: 16 * 1024]
for model, name in (("gpt-4o", "o200k"), ("gpt-4", "cl100k")):
    t = time.perf_counter()
    n = tokens.count_text(text, model)
    out[f"{name}_mchars_per_s"] = len(text) / (time.perf_counter() - t) / 1e6
    t = time.perf_counter()
    for _ in range(50):
        tokens.count_text(batch, model)
    out[f"{name}_16k_batch_ms"] = (time.perf_counter() - t) / 50 * 1000
    out[f"{name}_tokens_per_s"] = n / (len(text) / out[f"{name}_mchars_per_s"] / 1e6)
print(json.dumps(out))
"""


def one() -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    rounds = [one() for _ in range(p.parse_args().rounds)]
    print(json.dumps({k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
