"""Load generator for the benchmarks (aiohttp client on uvloop, keep-alive).

Runs as its own process so its CPU never mixes with the process under test.
Prints one JSON object with the results on stdout.

    python -m bench.load --url http://127.0.0.1:9000/v1/chat/completions \
        --key k1 --mode nonstream --requests 20000 --concurrency 50
    python -m bench.load ... --mode stream --requests 2000 --concurrency 100 --stagger 0.2
    python -m bench.load ... --mode stream --requests 5000 --concurrency 5000 --ramp 1000
    python -m bench.load ... --mode nonstream --requests 6000 --concurrency 50 --duration 20

Modes:
  nonstream  POST a chat completion, read the whole body; latency per request.
  stream     POST with "stream": true; TTFB = time from sending the request to
             the first body byte, TTFT = to the first chunk carrying text (a
             delta with non-empty "content"); a stream counts as complete only
             when the body ends with the ``data: [DONE]`` event.

Without ``--ramp`` every worker sends its next request as soon as the last answer
ended (a closed loop that drives the target flat out); ``--duration S`` bounds such
a run in time: no measured request starts after S seconds.

``--api responses`` sends OpenAI's Responses API body instead (``{"model", "input",
"stream"}``; point ``--url`` at ``/v1/responses``): TTFT is then to the first
``response.output_text.delta`` with text, and a stream counts as complete only
when its ``event: response.completed`` arrived whole (no ``[DONE]`` in that API).

With ``--warmup N`` the workers first send N unrecorded requests (which also
opens the keep-alive connections), then the process writes ``WARM`` on stderr
and waits for a line on stdin before the measured requests start; the caller
uses that pause to read the server's CPU counters.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import resource
import sys
import time

import orjson
import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector

# a chat delta with non-empty text (the role preamble has "content":"")
_CONTENT = re.compile(rb'"content":"[^"]')
# a Responses text delta with non-empty text
_DELTA = re.compile(rb'"delta":"[^"]')
# the terminal event of a Responses stream that finished (at the start of an event: after a blank line)
_COMPLETED = b"event: response.completed\n"


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))
    return s[idx]


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ttfb: list[float] = []
        self.ttft: list[float] = []
        self.ok = 0
        self.done = 0
        self.errors = 0
        self.bad_status: dict[int, int] = {}
        self.exc: dict[str, int] = {}
        self.open_now = 0
        self.open_max = 0

    def fail(self, status: int | None = None, exc: BaseException | None = None) -> None:
        self.errors += 1
        if status is not None:
            self.bad_status[status] = self.bad_status.get(status, 0) + 1
        if exc is not None:
            name = type(exc).__name__
            self.exc[name] = self.exc.get(name, 0) + 1


class Load:
    def __init__(self, args: argparse.Namespace, session: ClientSession) -> None:
        self.args = args
        self.session = session
        self.stream = args.mode == "stream"
        self.responses = args.api == "responses"
        payload: dict = {"model": args.model}
        if self.responses:
            payload["input"] = "hi"
        else:
            payload["messages"] = [{"role": "user", "content": "hi"}]
        if self.stream:
            payload["stream"] = True
        self.body = orjson.dumps(payload)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.key}"}

    async def one_nonstream(self, st: Stats) -> None:
        perf = time.perf_counter
        t0 = perf()
        async with self.session.post(self.args.url, data=self.body, headers=self.headers) as resp:
            await resp.read()
            status = resp.status
        dt = perf() - t0
        if status == 200:
            st.ok += 1
            st.latencies.append(dt)
        else:
            st.fail(status)

    async def one_stream(self, st: Stats) -> None:
        perf = time.perf_counter
        t0 = perf()
        first = None
        first_content = None
        tail = b""
        opened = False
        text = _DELTA if self.responses else _CONTENT
        completed = False  # Responses: the response.completed event has begun
        try:
            async with self.session.post(self.args.url, data=self.body, headers=self.headers) as resp:
                status = resp.status
                async for chunk in resp.content.iter_any():
                    if first is None:
                        first = perf() - t0
                        opened = True
                        st.open_now += 1
                        if st.open_now > st.open_max:
                            st.open_max = st.open_now
                    if first_content is None and text.search(tail[-32:] + chunk):
                        first_content = perf() - t0
                    if self.responses and not completed:
                        seam = tail[-32:] + chunk
                        at = seam.find(_COMPLETED)
                        completed = (at == 0 and not tail) or (at > 0 and seam[at - 1 : at] == b"\n")
                    tail = (tail + chunk)[-64:]
        finally:
            if opened:
                st.open_now -= 1
        dt = perf() - t0
        if status != 200:
            st.fail(status)
            return
        st.ok += 1
        st.latencies.append(dt)
        if first is not None:
            st.ttfb.append(first)
        if first_content is not None:
            st.ttft.append(first_content)
        if self.responses:
            # the terminal event began at the start of an event and the body ended with that event whole
            if completed and tail.endswith(b"\n\n"):
                st.done += 1
        elif tail.rstrip().endswith(b"data: [DONE]"):
            st.done += 1

    async def phase(self, total: int, st: Stats) -> float:
        """Send `total` requests from `concurrency` workers; return the elapsed seconds."""
        args = self.args
        one = self.one_stream if self.stream else self.one_nonstream
        next_idx = 0
        perf = time.perf_counter
        t_start = perf()
        deadline = t_start + args.duration if args.duration > 0 else None

        async def worker(k: int, n_workers: int) -> None:
            nonlocal next_idx
            if args.stagger > 0 and k:
                # spread the workers' first requests over `stagger` seconds so that equal-length
                # streams do not start (and end) in lock-step bursts
                await asyncio.sleep(args.stagger * k / n_workers)
            while next_idx < total:
                if deadline is not None and perf() >= deadline:
                    break  # the time bound of a closed-loop run: no new request starts after it
                i = next_idx
                next_idx += 1
                if args.ramp > 0:
                    # at most `ramp` request starts per second: spreads connection setup so
                    # thousands of connections do not overflow the server's accept backlog
                    delay = t_start + i / args.ramp - perf()
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    await one(st)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    st.fail(exc=e)

        n_workers = min(args.concurrency, total)
        await asyncio.gather(*(worker(k, n_workers) for k in range(n_workers)))
        return perf() - t_start


async def run(args: argparse.Namespace) -> dict:
    timeout = ClientTimeout(total=None, sock_connect=args.timeout, sock_read=args.timeout)
    connector = TCPConnector(limit=0, limit_per_host=0, force_close=False)
    async with ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
    ) as session:
        load = Load(args, session)
        if args.warmup > 0:
            warm = Stats()
            await load.phase(args.warmup, warm)
            if warm.errors:
                sys.stderr.write(f"warm-up errors: {warm.bad_status} {warm.exc}\n")
            sys.stderr.write("WARM\n")
            sys.stderr.flush()
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        st = Stats()
        # the client's own garbage collection pauses would show up as latency
        gc.collect()
        gc.disable()
        try:
            elapsed = await load.phase(args.requests, st)
        finally:
            gc.enable()

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 3)

    out = {
        "mode": args.mode,
        "api": args.api,
        "url": args.url,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "ok": st.ok,
        "errors": st.errors,
        "bad_status": {str(k): v for k, v in st.bad_status.items()},
        "exceptions": st.exc,
        "elapsed_s": round(elapsed, 4),
        "rps": round(st.ok / elapsed, 1) if elapsed > 0 else None,
        "lat_p50_ms": ms(percentile(st.latencies, 50)),
        "lat_p99_ms": ms(percentile(st.latencies, 99)),
    }
    if args.raw:
        out["lat_ms"] = [round(v * 1000.0, 3) for v in st.latencies]
        if load.stream:
            out["ttfb_ms"] = [round(v * 1000.0, 3) for v in st.ttfb]
            out["ttft_ms"] = [round(v * 1000.0, 3) for v in st.ttft]
    if load.stream:
        out.update(
            {
                "done": st.done,
                "open_max": st.open_max,
                "ttfb_p50_ms": ms(percentile(st.ttfb, 50)),
                "ttfb_p99_ms": ms(percentile(st.ttfb, 99)),
                "ttft_p50_ms": ms(percentile(st.ttft, 50)),
                "ttft_p99_ms": ms(percentile(st.ttft, 99)),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load", description="Benchmark load generator")
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="k1")
    p.add_argument("--model", default="demo")
    p.add_argument("--mode", choices=("nonstream", "stream"), default="nonstream")
    p.add_argument("--api", choices=("chat", "responses"), default="chat",
                   help="request body: a chat completion (default) or a Responses API request")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--warmup", type=int, default=0, help="unrecorded requests first, then WARM / wait for stdin")
    p.add_argument("--ramp", type=float, default=0.0, help="max request starts per second (0 = no limit)")
    p.add_argument("--stagger", type=float, default=0.0, help="spread the first requests over this many seconds")
    p.add_argument("--duration", type=float, default=0.0,
                   help="closed loop bound: no measured request starts after this many seconds (0 = none)")
    p.add_argument("--raw", action="store_true", help="also output every latency / TTFB (ms)")
    p.add_argument("--timeout", type=float, default=60.0, help="connect / read inactivity timeout, s")
    args = p.parse_args(argv)
    _raise_nofile()
    result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
