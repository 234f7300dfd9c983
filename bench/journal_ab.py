"""Relay CPU per request with the ledger's journal on and off: `python -m bench.journal_ab [--rounds N] [--all]`.

With `--all` the second relay has the access log off too: what the journal and the access log cost together.
Two relays on SQLite (`ledger.journal: true` / `false`) behind one fake upstream, loaded at the same time
on the same CPU in each round (non-stream, then stream chat, keep-alive connections), so whatever else the
machine runs weighs on both alike. Prints the median CPU microseconds per request of each, and the median
of the rounds' differences.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .measure import run_load
from .procs import start_fake, url
from .relays import start_relay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--all", action="store_true", help="the 'off' relay has the access log off as well")
    args = p.parse_args()
    off_extra = "access_log: \"off\"\n" if args.all else ""
    with tempfile.TemporaryDirectory(prefix="relay-journal-ab-") as tmp:
        logdir = Path(tmp)
        fake = start_fake(logdir, "fake", chunks=8, chunk_delay_ms=0)
        relays = {
            on: start_relay(logdir, f"journal-{'on' if on else 'off'}", fake, key_args=None,
                            extra=f"ledger: {{journal: {'true' if on else 'false'}}}\n" + ("" if on else off_extra))
            for on in (True, False)
        }
        per_req: dict[tuple[bool, str], list[float]] = {}
        try:
            with ThreadPoolExecutor(2) as pool:
                for _ in range(args.rounds):
                    for mode in ("nonstream", "stream"):
                        # both at once, on the same CPU: whatever else the machine runs weighs on both alike
                        runs = {
                            on: pool.submit(run_load, url(proc.port), key, mode, args.requests, args.concurrency,
                                            proc.pid, warmup=500)
                            for on, (proc, key) in relays.items()
                        }
                        for on, fut in runs.items():
                            r = fut.result()
                            per_req.setdefault((on, mode), []).append(r["cpu_s"] / (r.get("ok") or args.requests) * 1e6)
        finally:
            for proc, _ in relays.values():
                proc.stop()
            fake.stop()
    for mode in ("nonstream", "stream"):
        ons, offs = per_req[(True, mode)], per_req[(False, mode)]
        on, off = statistics.median(ons), statistics.median(offs)
        paired = statistics.median(a - b for a, b in zip(ons, offs))
        what = "journal + access log" if args.all else "journal"
        print(f"{mode:>9}: {what} on {on:6.1f} us/request, off {off:6.1f} us/request "
              f"(median of the rounds' differences {paired:+.1f} us) over {args.rounds} rounds of {args.requests}; "
              f"on {' '.join(f'{x:.0f}' for x in ons)}, off {' '.join(f'{x:.0f}' for x in offs)}")


if __name__ == "__main__":
    main()
