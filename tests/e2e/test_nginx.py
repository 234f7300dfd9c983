"""deploy/nginx.conf in front of the relay, with a real nginx: streams arrive event by event, the
client's address reaches the relay through server.trusted_proxies, uploads and TLS work.

nginx connects to the relay from 127.0.0.2 here (proxy_bind, added by the test) so that the client
(127.0.0.1) and the proxy have different addresses on one machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, RelayFactory, Upstream, wait_ledger
from tests.e2e.test_admin import ADMIN_TOKEN, create
from tests.procs import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
if NGINX is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("nginx is required in CI (.ci/run installs it)")
    pytest.skip("nginx is not installed", allow_module_level=True)


def nginx_config(tmp: Path, relay_port: int, http_port: int, https_port: int) -> Path:
    """The shipped server blocks, pointed at this test's ports, certificate and temp folders."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{relay_port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = site.replace("/etc/ssl/relay/", f"{tmp}/")
    site = site.replace("proxy_pass http://relay;", "proxy_pass http://relay;\n        proxy_bind 127.0.0.2;")
    assert site.count(str(relay_port)) == 1 and "proxy_bind" in site
    temp = "\n".join(f"    {k}_temp_path {tmp}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = (
        f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {tmp}/access.log;\n{temp}\n{site}\n}}\n"
    )
    path = tmp / "nginx.conf"
    path.write_text(main)
    return path


@pytest.fixture
async def nginx(tmp_path: Path, relay_factory: RelayFactory) -> AsyncIterator[tuple[str, str, object]]:
    relay = await relay_factory(admin_token=ADMIN_TOKEN, server={"trusted_proxies": ["127.0.0.2/32"]})
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(tmp_path / "privkey.pem"), "-out", str(tmp_path / "fullchain.pem")],
        check=True, capture_output=True, timeout=30,
    )
    http_port, https_port = free_port(), free_port()
    conf = nginx_config(tmp_path, int(relay.url.rsplit(":", 1)[1]), http_port, https_port)
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    try:
        for _ in range(100):  # bounded: 5 s for nginx to listen
            try:
                _, w = await asyncio.open_connection("127.0.0.1", https_port)
                w.close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "nginx exited") from None
                await asyncio.sleep(0.05)
        yield f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", relay
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test's self-signed certificate
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


async def admin_key(http: aiohttp.ClientSession, relay: object, ip_allow: list[str]) -> str:
    return str((await create(http, relay, ip_allow=ip_allow))["key"])  # type: ignore[arg-type]


async def test_stream_arrives_event_by_event_through_nginx(nginx, http, upstream: Upstream) -> None:
    url, _, relay = nginx
    upstream.options.chunk_delay_ms = 150
    upstream.options.chunks = 4
    key = await admin_key(http, relay, [])
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        reads: list[bytes] = []
        async for piece in resp.content.iter_any():
            reads.append(piece)
    whole = b"".join(reads)
    assert whole.rstrip().endswith(b"data: [DONE]")
    # unbuffered: the first content event reached the client before the stream was over
    first = next(i for i, r in enumerate(reads) if b'"content"' in r)
    assert b"[DONE]" not in b"".join(reads[: first + 1])
    assert len(reads) >= 3


async def test_client_address_comes_through_trusted_proxy(nginx, http) -> None:
    url, _, relay = nginx
    mine = await admin_key(http, relay, ["127.0.0.1/32"])  # the client's own address
    proxys = await admin_key(http, relay, ["127.0.0.2/32"])  # nginx's address, as the relay's socket sees it
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    for key, want in ((mine, 200), (proxys, 403)):
        async with http.post(url + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == want, await resp.text()
    # a client cannot pass itself off as another address through nginx either: nginx appends the real one
    async with http.post(url + "/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {proxys}", "X-Forwarded-For": "127.0.0.2"}) as resp:
        assert resp.status == 403
    # the ledger has the client's own address for the request it served, not nginx's
    rows = await wait_ledger(relay.database, 1)  # type: ignore[attr-defined]
    assert rows and {r["client"] for r in rows} == {"127.0.0.1"}


async def test_plain_http_redirects_to_tls(nginx, http) -> None:
    _, plain, _ = nginx
    async with http.get(plain + "/v1/models", allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"].startswith("https://")
