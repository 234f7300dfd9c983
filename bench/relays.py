"""Relays under test: their configs, their keys, and the engines a scaled-out relay runs on.

A relay for the suite is `python -m relay serve` on a free port, with its config, SQLite file and log in
the run's temporary directory. The scaled-out one (relay+pg) stores keys, balances and the ledger in a
PostgreSQL database created for the run and shares state through Redis under a key prefix of its own;
both are removed at the end of the run (`Scratch.drop`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.procs import CPU_SUT, PY, ROOT, Proc, free_port, url

__all__ = [
    "BENCH_LIMITS", "CLIENT_KEY", "PG_URL", "REDIS_URL", "UPSTREAM_KEY", "Scratch", "check_relay_features",
    "ledger_rows", "mask", "redis_reachable", "relay_config", "start_relay",
]

CLIENT_KEY = "sk-bench-0123456789abcdef0123456789abcdef0123456789ab"
UPSTREAM_KEY = "k1"
REDIS_URL = os.environ.get("RELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# the admin connection: relay+pg's database is created (and dropped) through it
PG_URL = os.environ.get("RELAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Limits high enough never to refuse: the buckets are checked and charged on every request all the same.
BENCH_LIMITS = ("--rpm", "100000000", "--rpd", "1000000000", "--tpm", "100000000000", "--tpd", "1000000000000")


def mask(u: str) -> str:
    """A URL with its password (if any) hidden, for the report."""
    parts = urlsplit(u)
    if parts.password is None:
        return u
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def relay_config(port: int, database: str, upstream_port: int, extra: str = "") -> str:
    """The YAML of a bench relay: one openai channel of three accounts on the fake, a priced model."""
    return (
        "server: {host: 127.0.0.1, port: %d}\n"
        "database: %s\n"
        "client_keys:\n"
        "  - {name: bench, key: %s}\n"
        "channels:\n"
        "  - name: fake\n"
        "    type: openai\n"
        "    base_url: http://127.0.0.1:%d/v1\n"
        "    keys: [k1, k2, k3]\n"
        "    models: [demo]\n"
        "prices: {demo: {input: 1, output: 2}}\n"
        "%s"
        "log_level: warning\n" % (port, json.dumps(database), CLIENT_KEY, upstream_port, extra)
    )


def start_relay(
    logdir: Path, name: str, upstream: Proc, *, database: str | None = None, extra: str = "",
    key_args: tuple[str, ...] | None = BENCH_LIMITS, workers: int = 1,
) -> tuple[Proc, str]:
    """Start a relay; returns it and a second client key made with `relay keys create key_args`.

    The default second key carries rate limits (never reached); with key_args None no key is made and the
    config's CLIENT_KEY comes back. `database` defaults to a SQLite file in logdir; `extra` is more YAML
    (e.g. a `limits:` block).
    """
    port = free_port()
    cfg = logdir / f"{name}.yaml"
    cfg.write_text(relay_config(port, database or str(logdir / f"{name}.db"), upstream.port, extra))
    key = CLIENT_KEY
    if key_args is not None:
        made = subprocess.run(
            [PY, "-m", "relay", "keys", "create", "--config", str(cfg), "--name", "bench-key", *key_args],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        if made.returncode != 0:
            raise RuntimeError(f"relay keys create for {name} failed: {made.stderr.strip()}")
        key = made.stdout.strip().splitlines()[-1]
    argv = [PY, "-m", "relay", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = Proc(name, argv, CPU_SUT, logdir, port)
    proc.wait_ready("/healthz", timeout=60.0)
    return proc, key


def redis_reachable(redis_url: str = REDIS_URL) -> bool:
    u = urlsplit(redis_url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=0.5):
            return True
    except OSError:
        return False


class Scratch:
    """What one run creates on the shared engines: a PostgreSQL database and Redis key prefixes.

    The database is `relay_bench_<random>` on the server of PG_URL (dropped WITH (FORCE) at the end, so a
    relay left connected cannot keep it); each Redis prefix is `relay_bench_<random>_<n>:`, and only keys
    under it are deleted.
    """

    def __init__(self) -> None:
        self.tag = f"relay_bench_{secrets.token_hex(6)}"
        self.pg_url: str | None = None  # the run's database, once created
        self.prefixes: list[str] = []

    def redis_prefix(self) -> str:
        p = f"{self.tag}_{len(self.prefixes)}:"
        self.prefixes.append(p)
        return p

    async def _admin(self, sql: str) -> None:
        import asyncpg

        con = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    def create_database(self) -> str:
        """The URL of a new, empty database; raises OSError or asyncpg's errors when the server cannot."""
        asyncio.run(self._admin(f'CREATE DATABASE "{self.tag}"'))
        self.pg_url = urlunsplit(urlsplit(PG_URL)._replace(path="/" + self.tag))
        return self.pg_url

    def ledger(self) -> dict[str, float] | None:
        """Rows, their summed cost and the keys' summed spent in the run's database (None if unreadable)."""
        import asyncpg

        async def read() -> dict[str, float]:
            con = await asyncpg.connect(self.pg_url, timeout=5)
            try:
                rows, cost = await con.fetchrow("SELECT count(*), coalesce(sum(cost_usd), 0) FROM usage")
                spent = await con.fetchval("SELECT coalesce(sum(spent_usd), 0) FROM keys")
                return {"rows": rows, "cost_usd": cost, "spent_usd": spent}
            finally:
                await con.close()

        if self.pg_url is None:
            return None
        try:
            return asyncio.run(read())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None

    def drop(self) -> list[str]:
        """Remove the database and the Redis keys; returns a note for each part that could not be removed."""
        problems = []
        if self.pg_url is not None:
            try:
                asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.tag}" WITH (FORCE)'))
                self.pg_url = None
            except Exception as e:  # noqa: BLE001 - reported, the run goes on to write its report
                problems.append(f"could not drop PostgreSQL database {self.tag}: {e}")
        if self.prefixes:
            import redis

            try:
                r = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
                try:
                    for prefix in self.prefixes:
                        batch = list(r.scan_iter(match=prefix + "*", count=1000))
                        for i in range(0, len(batch), 1000):
                            r.delete(*batch[i : i + 1000])
                finally:
                    r.close()
                self.prefixes.clear()
            except redis.RedisError as e:
                problems.append(f"could not delete the Redis keys under {self.tag}_*: {e}")
        return problems


def ledger_rows(db: Path) -> int | None:
    """Rows in a SQLite relay's usage ledger (None if it cannot be read)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            n: int = con.execute("SELECT count(*) FROM usage").fetchone()[0]
            return n
        finally:
            con.close()
    except sqlite3.Error:
        return None


def check_relay_features(port: int) -> list[str]:
    """Confirm auth and metrics are active on the relay under test."""
    notes = []
    req = urllib.request.Request(
        url(port), data=b'{"model":"demo","messages":[{"role":"user","content":"hi"}]}',
        headers={"Content-Type": "application/json"}, method="POST",
    )
    status: int | str
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        status = f"error {e}"
    notes.append(f"relay without client key answers {status} (auth on)")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read()
            notes.append(f"relay GET /metrics answers {r.status} ({len(body)} bytes)")
    except urllib.error.HTTPError as e:
        notes.append(f"relay GET /metrics answers {e.code}")
    except OSError as e:
        notes.append(f"relay GET /metrics failed: {e}")
    return notes
