"""Minimal aiohttp passthrough proxy: the Python baseline for the benchmarks.

It does the least a proxy can do with aiohttp: one shared ClientSession
(unlimited connector), forward method, path and body to a fixed upstream,
relay status and body back. Streamed upstream responses are forwarded chunk by
chunk as they arrive (``resp.content.iter_any()`` -> ``StreamResponse.write``).
No auth, no parsing, no accounting: whatever the relay costs on top of this is
the price of its features.

    python -m bench.baseline_proxy --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal

import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

# Request headers not forwarded upstream (hop-by-hop or recomputed by aiohttp).
_SKIP_REQ = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_app(upstream: str) -> web.Application:
    upstream = upstream.rstrip("/")
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def on_startup(app: web.Application) -> None:
        app["session"] = ClientSession(
            connector=TCPConnector(limit=0, limit_per_host=0),
            timeout=ClientTimeout(total=None, sock_connect=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        session: ClientSession = request.app["session"]
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQ}
        async with session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as up:
            out_headers = {}
            ctype = up.headers.get("Content-Type")
            if ctype:
                out_headers["Content-Type"] = ctype
            cenc = up.headers.get("Content-Encoding")
            if cenc:
                out_headers["Content-Encoding"] = cenc
            streamed = (ctype or "").startswith("text/event-stream") or (
                up.headers.get("Content-Length") is None
            )
            if not streamed:
                data = await up.read()
                return web.Response(status=up.status, body=data, headers=out_headers)
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(make_app(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    print(f"baseline proxy listening on http://{host}:{port} -> {upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.baseline_proxy", description="Minimal aiohttp passthrough proxy (benchmark baseline)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    args = p.parse_args(argv)
    _raise_nofile()
    uvloop.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
