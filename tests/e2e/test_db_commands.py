"""`relay db migrate` and `relay db copy` as real subprocesses, on real SQLite files and a real PostgreSQL
database: what each prints, that an old relay.db upgrades in place with nothing lost, that a copy of
100,000 ledger rows carries every key and balance over, and that running either twice changes nothing.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from relay.store import MIGRATIONS, Store
from relay.types import KeyRecord, UsageRecord
from tests.e2e.test_cli import cli
from tests.pg import pg_url  # noqa: F401 - fixture

LATEST = len(MIGRATIONS)
T0 = 1_767_225_600.0

# The ledger as the relay wrote it before billing (no cost_usd) and before keys were stored.
PRE_BILLING = """
CREATE TABLE usage (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT    NOT NULL UNIQUE,
    ts                REAL    NOT NULL,
    key_id            TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    endpoint          TEXT    NOT NULL,
    channel           TEXT,
    account           INTEGER,
    status            INTEGER NOT NULL,
    end_reason        TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    usage_source      TEXT    NOT NULL,
    latency_ms        REAL    NOT NULL,
    ttft_ms           REAL,
    stream            INTEGER NOT NULL,
    attempts          INTEGER NOT NULL
);
CREATE INDEX usage_ts ON usage (ts);
CREATE INDEX usage_key_ts ON usage (key_id, ts);
"""


def config(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"database: {database}\nchannels: []\n")
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[asyncpg.Connection]:  # noqa: F811
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


def usage(i: int, key_id: str, cost: float) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{i:06d}", ts=T0 + i, key_id=key_id, model=("demo", "gpt-4o-mini")[i % 2],
        endpoint="chat/completions", channel="fake", account=i % 3, status=200 if i % 10 else 502,
        end_reason="ok" if i % 10 else "upstream_error", prompt_tokens=i % 50, completion_tokens=i % 70,
        usage_source="upstream", latency_ms=1.25, ttft_ms=None if i % 2 else 0.5, stream=bool(i % 2), attempts=1,
        cost_usd=cost,
    )


# -- migrate ------------------------------------------------------------------------------------------------


async def test_migrate_a_fresh_sqlite_file_then_again(tmp_path: Path) -> None:
    cfg = config(tmp_path, str(tmp_path / "new.db"))
    first = await cli("db", "migrate", "--config", str(cfg))
    assert first.code == 0, first.err
    assert first.out.strip() == f"schema at version {LATEST} (applied {', '.join(map(str, range(1, LATEST + 1)))})"
    second = await cli("db", "migrate", "--config", str(cfg))
    assert second.code == 0 and second.out.strip() == f"schema already at version {LATEST}"
    with contextlib.closing(sqlite3.connect(tmp_path / "new.db")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST


async def test_migrate_upgrades_a_pre_billing_ledger_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(PRE_BILLING)
        db.executemany(
            "INSERT INTO usage (request_id, ts, key_id, model, endpoint, channel, account, status, end_reason, "
            "prompt_tokens, completion_tokens, usage_source, latency_ms, ttft_ms, stream, attempts) "
            "VALUES (?, ?, 'k', 'demo', 'chat/completions', 'fake', 0, 200, 'ok', ?, 3, 'upstream', 1.0, NULL, 0, 1)",
            [(f"old_{i}", T0 + i, i) for i in range(50)],
        )
        db.commit()
    cfg = config(tmp_path, str(path))
    run = await cli("db", "migrate", "--config", str(cfg))
    assert run.code == 0, run.err
    assert run.out.startswith(f"schema at version {LATEST} (applied 1, 2")
    again = await cli("db", "migrate", "--config", str(cfg))
    assert again.out.strip() == f"schema already at version {LATEST}"
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT request_id, prompt_tokens, cost_usd FROM usage ORDER BY id").fetchall()
    assert rows == [(f"old_{i}", i, 0.0) for i in range(50)]
    # the upgraded file works as any other: keys, and a ledger that charges them
    store = Store(str(path))
    await store.open()
    try:
        await store.create_key(KeyRecord(id="key_a", name="a", key_hash="0" * 64, prefix="sk-aaaa", granted_usd=1.0))
        assert await store.write_usage([usage(1, "key_a", 0.5)]) == 0
        assert (await store.spent_by_ledger())["key_a"] == 0.5
        assert await store.count_usage() == 51
    finally:
        await store.close()


async def test_migrate_a_relay_db_from_before_versions_keeps_everything(tmp_path: Path) -> None:
    """A file the relay wrote before schema versions (the same tables, user_version 0)."""
    path = tmp_path / "relay.db"
    store = Store(str(path))
    await store.open()
    await store.create_key(KeyRecord(id="key_a", name="a", key_hash="1" * 64, prefix="sk-aaaa", granted_usd=3.0))
    await store.write_usage([usage(i, "key_a", 0.01) for i in range(100)])
    before = await store.list_keys()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 0")
        db.commit()
    run = await cli("db", "migrate", "--config", str(config(tmp_path, str(path))))
    assert run.code == 0 and run.out.startswith(f"schema at version {LATEST} (applied 1, 2"), run.err
    store = Store(str(path))
    await store.open()
    try:
        assert await store.list_keys() == before
        assert await store.count_usage() == 100
    finally:
        await store.close()


async def test_migrate_postgres_then_again(tmp_path: Path, pg_url: str, pg: asyncpg.Connection) -> None:  # noqa: F811
    cfg = config(tmp_path, pg_url)
    first = await cli("db", "migrate", "--config", str(cfg))
    assert first.code == 0, first.err
    assert first.out.strip() == f"schema at version {LATEST} (applied {', '.join(map(str, range(1, LATEST + 1)))})"
    second = await cli("db", "migrate", "--config", str(cfg))
    assert second.code == 0 and second.out.strip() == f"schema already at version {LATEST}"
    versions = [r[0] for r in await pg.fetch("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))
    tables = {r[0] for r in await pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"usage", "keys", "schema_version"} <= tables


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {LATEST + 1}")
    run = await cli("keys", "list", "--config", str(config(tmp_path, str(path))))
    assert run.code == 1 and "newer than this relay knows" in one_line(run.err)


# -- copy ---------------------------------------------------------------------------------------------------


async def make_embedded(path: Path, rows: int) -> list[KeyRecord]:
    """A relay.db with four keys (one unlimited, one revoked) and `rows` ledger rows written as the relay does."""
    store = Store(str(path))
    await store.open()
    try:
        specs = [
            KeyRecord(id="key_a", name="a", key_hash="a" * 64, prefix="sk-aaaa", granted_usd=500.0, rpm=60,
                      models=("demo",), ip_allow=("10.0.0.0/8",), group="team", expires_at=T0 + 86400 * 365),
            KeyRecord(id="key_b", name="b", key_hash="b" * 64, prefix="sk-bbbb", granted_usd=100.0, tpd=10**12),
            KeyRecord(id="key_c", name="c", key_hash="c" * 64, prefix="sk-cccc"),
            KeyRecord(id="cfg-d", name="d", key_hash="d" * 64, prefix="sk-dddd", status="revoked", created_at=T0),
        ]
        for k in specs:
            await store.create_key(k)
        ids = [k.id for k in specs]
        costs = (0.0, 0.000125, 0.01, 0.5, 1.0)
        for start in range(0, rows, 20_000):
            batch = [usage(i, ids[i % 4], costs[i % 5]) for i in range(start, min(rows, start + 20_000))]
            assert await store.write_usage(batch) == 0
        return await store.list_keys()
    finally:
        await store.close()


def sqlite_sums(path: Path) -> tuple[int, float, dict[str, float]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        count, total = db.execute("SELECT COUNT(*), SUM(cost_usd) FROM usage").fetchone()
        spent = dict(db.execute("SELECT id, spent_usd FROM keys"))
    return count, total, spent


async def pg_sums(pg: asyncpg.Connection) -> tuple[int, float, dict[str, float]]:
    count, total = await pg.fetchrow("SELECT COUNT(*), SUM(cost_usd) FROM usage")
    spent = {r["id"]: r["spent_usd"] for r in await pg.fetch("SELECT id, spent_usd FROM keys")}
    return count, total, spent


async def test_copy_100k_ledger_rows_then_again(tmp_path: Path, pg_url: str, pg: asyncpg.Connection) -> None:  # noqa: F811
    source = tmp_path / "relay.db"
    keys = await make_embedded(source, 100_000)
    count, total, spent = sqlite_sums(source)
    cfg = config(tmp_path, pg_url)

    first = await cli("db", "copy", "--from", str(source), "--config", str(cfg))
    assert first.code == 0, first.err
    assert first.out.strip() == "keys: 4 copied, 0 already there; usage: 100000 copied, 0 already there"
    got_count, got_total, got_spent = await pg_sums(pg)
    assert got_count == count == 100_000
    assert got_spent == spent  # balances as they were, not added up again from the ledger
    assert round(got_total, 6) == round(total, 6)
    per_key = {r[0]: r[1] for r in await pg.fetch("SELECT key_id, SUM(cost_usd) FROM usage GROUP BY key_id")}
    assert {k: round(v, 6) for k, v in per_key.items()} == {k: round(v, 6) for k, v in spent.items()}

    second = await cli("db", "copy", "--from", str(source), "--config", str(cfg))
    assert second.code == 0, second.err
    assert second.out.strip() == "keys: 0 copied, 4 already there; usage: 0 copied, 100000 already there"
    assert await pg_sums(pg) == (got_count, got_total, got_spent)

    # every column of every key came over (its rev is PostgreSQL's own), and the relay's store reads them back
    from relay.store_pg import PgStore

    store = PgStore(pg_url)
    await store.open()
    try:
        copied = await store.list_keys()
        assert [replace(k, rev=0) for k in copied] == [replace(k, rev=0) for k in keys]
        assert await store.usage_summary(key_id="key_a", by=("key",)) == [
            {"key": "key_a", "requests": 25_000, "ok": 20_000, "prompt_tokens": sum(i % 50 for i in range(0, 100_000, 4)),
             "completion_tokens": sum(i % 70 for i in range(0, 100_000, 4)), "cost_usd": round(spent["key_a"], 9)}
        ]
    finally:
        await store.close()
    rows = await pg.fetch("SELECT request_id, stream, ttft_ms, status FROM usage ORDER BY id LIMIT 3")
    assert [tuple(r) for r in rows] == [("req_000000", False, 0.5, 502), ("req_000001", True, None, 200),
                                        ("req_000002", False, 0.5, 200)]


async def test_copy_adds_only_what_is_new(tmp_path: Path, pg_url: str, pg: asyncpg.Connection) -> None:  # noqa: F811
    source = tmp_path / "relay.db"
    await make_embedded(source, 1_000)
    cfg = config(tmp_path, pg_url)
    assert (await cli("db", "copy", "--from", str(source), "--config", str(cfg))).code == 0
    store = Store(str(source))
    await store.open()
    await store.create_key(KeyRecord(id="key_e", name="e", key_hash="e" * 64, prefix="sk-eeee"))
    await store.write_usage([usage(i, "key_e", 0.25) for i in range(1_000, 1_010)])
    await store.close()
    run = await cli("db", "copy", "--from", str(source), "--config", str(cfg))
    assert run.out.strip() == "keys: 1 copied, 4 already there; usage: 10 copied, 1000 already there", run.err
    assert await pg.fetchval("SELECT spent_usd FROM keys WHERE id = 'key_e'") == 2.5
    # a copied key shows up for every running relay's key cache: its rev is above every rev already there
    revs = dict(await pg.fetch("SELECT id, rev FROM keys"))
    assert revs["key_e"] == max(revs.values()) and len(set(revs.values())) == 5


async def test_copy_a_pre_billing_ledger(tmp_path: Path, pg_url: str, pg: asyncpg.Connection) -> None:  # noqa: F811
    source = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(source)) as db:
        db.executescript(PRE_BILLING)
        db.execute(
            "INSERT INTO usage (request_id, ts, key_id, model, endpoint, channel, account, status, end_reason, "
            "prompt_tokens, completion_tokens, usage_source, latency_ms, ttft_ms, stream, attempts) "
            "VALUES ('old_1', 1.0, 'k', 'demo', 'chat/completions', NULL, NULL, 200, 'ok', 1, 2, 'estimate', 1.0, NULL, 1, 1)"
        )
        db.commit()
    run = await cli("db", "copy", "--from", str(source), "--config", str(config(tmp_path, pg_url)))
    assert run.out.strip() == "keys: 0 copied, 0 already there; usage: 1 copied, 0 already there", run.err
    assert tuple(await pg.fetchrow("SELECT request_id, cost_usd, stream FROM usage")) == ("old_1", 0.0, True)


async def test_copy_bad_arguments_exit_2_with_one_line(tmp_path: Path, pg_url: str, pg: asyncpg.Connection) -> None:  # noqa: F811
    source = tmp_path / "relay.db"
    await make_embedded(source, 10)
    text = tmp_path / "text.db"
    text.write_text("this is not a database\n" * 100)
    empty = tmp_path / "empty.db"
    with contextlib.closing(sqlite3.connect(empty)) as db:
        db.execute("CREATE TABLE other (x)")
    pg_cfg = config(tmp_path, pg_url)
    (tmp_path / "sqlite").mkdir()
    sqlite_cfg = config(tmp_path / "sqlite", str(tmp_path / "other.db"))
    cases = [
        (source, sqlite_cfg, "not PostgreSQL"),
        (tmp_path / "missing.db", pg_cfg, "no such file"),
        (text, pg_cfg, "not a SQLite database"),
        (empty, pg_cfg, "not a relay database"),
    ]
    for src, cfg, says in cases:
        run = await cli("db", "copy", "--from", str(src), "--config", str(cfg))
        assert run.code == 2 and run.out == "", (run.code, run.out, run.err)
        assert says in one_line(run.err)
    # nothing was written anywhere: not even the schema
    assert await pg.fetchval("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    assert not (tmp_path / "other.db").exists()
    missing_flag = await cli("db", "copy", "--config", str(pg_cfg))
    assert missing_flag.code == 2 and "--from" in one_line(missing_flag.err)


async def test_postgres_errors_are_one_line_with_the_password_masked(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    unreachable = config(tmp_path, "postgresql://relay:s3cret@127.0.0.1:1/relay")
    run = await cli("keys", "list", "--config", str(unreachable))
    line = one_line(run.err)
    assert run.code == 1 and line.startswith("relay: database error (postgresql://relay:***@127.0.0.1:1/relay): ")
    assert "s3cret" not in run.err
    missing = config(tmp_path, re.sub(r"/[^/]+$", "/relay_no_such_database", pg_url))
    run = await cli("usage", "--config", str(missing))
    assert run.code == 1 and "relay_no_such_database" in one_line(run.err) and "does not exist" in run.err
    bad = config(tmp_path, "postgresql://relay:s3cret@127.0.0.1:port/relay")
    run = await cli("keys", "list", "--config", str(bad))
    assert run.code == 2 and "not a valid PostgreSQL URL" in one_line(run.err) and "s3cret" not in run.err
