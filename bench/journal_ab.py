"""Relay CPU per request with the ledger's journal on and off: `python -m bench.journal_ab [--rounds N]`.

Two relays on SQLite (`ledger.journal: true` / `false`) behind one fake upstream, measured in alternating
rounds (non-stream and stream chat, keep-alive connections), so a busy machine weighs on both alike.
Prints the median CPU microseconds per request of each, and their difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .measure import run_load
from .procs import start_fake, url
from .relays import start_relay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-journal-ab-") as tmp:
        logdir = Path(tmp)
        fake = start_fake(logdir, "fake", chunks=8, chunk_delay_ms=0)
        relays = {
            on: start_relay(logdir, f"journal-{'on' if on else 'off'}", fake, key_args=None,
                            extra=f"ledger: {{journal: {'true' if on else 'false'}}}\n")
            for on in (True, False)
        }
        per_req: dict[tuple[bool, str], list[float]] = {}
        try:
            for _ in range(args.rounds):
                for mode in ("nonstream", "stream"):
                    for on, (proc, key) in relays.items():
                        r = run_load(url(proc.port), key, mode, args.requests, args.concurrency, proc.pid,
                                     warmup=500)
                        ok = r.get("ok", args.requests) or args.requests
                        per_req.setdefault((on, mode), []).append(r["cpu_s"] / ok * 1e6)
        finally:
            for proc, _ in relays.values():
                proc.stop()
            fake.stop()
    for mode in ("nonstream", "stream"):
        on = statistics.median(per_req[(True, mode)])
        off = statistics.median(per_req[(False, mode)])
        print(f"{mode:>9}: journal on {on:6.1f} us/request, off {off:6.1f} us/request "
              f"({on - off:+.1f} us, {100 * (on - off) / off:+.1f}%) over {args.rounds} rounds of {args.requests}")


if __name__ == "__main__":
    main()
