"""The prober's cost: CPU of the relay process per health probe, against the fake upstream.

    python -m bench.probes [--probes 2000] [--accounts 4] [--concurrency 4]

Starts the fake OpenAI upstream (bench.fake_upstream, on the auxiliary CPU), then in this process, pinned to
the CPU under test, probes its accounts through relay.prober.Prober.probe exactly as the schedule does
(the same request building, upstream call, classification and state update), `--probes` times with at
most `--concurrency` in flight. Prints one JSON line: CPU µs and wall ms per probe. The suite's relay+probes
target (bench/run.py) measures the same cost end to end: relay CPU per request with probes every 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from bench.procs import CPU_SUT, start_fake
from relay.config import ChannelConfig, RetryConfig, TimeoutConfig
from relay.config_health import HealthConfig
from relay.prober import Prober
from relay.router import Router
from relay.upstream import Upstream

__all__ = ["main", "measure"]


async def measure(port: int, probes: int, accounts: int, concurrency: int) -> dict[str, float]:
    ch = ChannelConfig(name="fake", type="openai", base_url=f"http://127.0.0.1:{port}/v1",
                       keys=tuple(f"k{i}" for i in range(accounts)), models=("demo",))
    router = Router([ch], RetryConfig())
    upstream = Upstream(TimeoutConfig())
    await upstream.start()
    prober = Prober(router, upstream, HealthConfig(concurrency=concurrency))
    sem = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            if not (await prober.probe(router.accounts[i % accounts])).ok:
                failed += 1

    try:
        await asyncio.gather(*(one(i) for i in range(min(200, probes))))  # warm-up: connections, imports
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(probes)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await upstream.close()
    return {
        "probes": probes, "failed": failed, "cpu_us_per_probe": round(cpu / probes * 1e6, 1),
        "wall_ms_per_probe": round(wall / probes * 1000, 3), "probes_per_cpu_second": round(probes / cpu, 0),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--accounts", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-bench-probes-") as tmp:
        fake = start_fake(Path(tmp), "fake", chunks=8, chunk_delay_ms=0)
        try:
            os.sched_setaffinity(0, {CPU_SUT})
            try:
                import uvloop
                run = uvloop.run
            except ImportError:  # pragma: no cover
                run = asyncio.run
            result = run(measure(fake.port, args.probes, args.accounts, args.concurrency))
        finally:
            fake.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
