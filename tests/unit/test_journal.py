"""The ledger's journal on real files and a real SQLite store: rows appended as lines, replayed once (spent
counted once), forgotten after the flush, a torn last line ignored, a live process's journal left alone."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import fields, replace
from pathlib import Path

import orjson
import pytest

from relay.config import ConfigError, LedgerConfig
from relay.journal import Journal, make_journal, parse_rows
from relay.ledger import Ledger
from relay.metrics import Metrics
from relay.store import Store
from relay.types import KeyRecord, UsageRecord

DB = "relay.db"
HOLDER = "host:8080:0"


def row(i: int, **kw: object) -> UsageRecord:
    base = UsageRecord(
        request_id=f"req_{i}", ts=1_700_000_000.0 + i, key_id="k1", model="demo", endpoint="chat/completions",
        channel="fake", account=0, status=200, end_reason="ok", prompt_tokens=5, completion_tokens=7,
        usage_source="upstream", latency_ms=1.5, ttft_ms=None, stream=i % 2 == 0, attempts=1, cost_usd=0.25,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def journal_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.journal")) if d.exists() else []


def lines(d: Path) -> list[bytes]:
    """The row lines of the journals in d (each file's first line names the fields)."""
    return [ln for f in journal_files(d) for ln in f.read_bytes().splitlines()[1:]]


def line(r: UsageRecord) -> bytes:
    return orjson.dumps([getattr(r, f.name) for f in fields(UsageRecord)]) + b"\n"


def books(path: Path) -> tuple[int, float, float]:
    """(ledger rows, ledger sum of cost, key k1's spent), straight from the file."""
    with sqlite3.connect(path) as db:
        n, total = db.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM usage").fetchone()
        (spent,) = db.execute("SELECT spent_usd FROM keys WHERE id = 'k1'").fetchone()
    return n, total, spent


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(str(tmp_path / DB))
    await s.open()
    await s.create_key(KeyRecord("k1", "team", "hash-1", "sk-abcd", granted_usd=100.0))
    yield s
    await s.close()


def ledger(store: Store, d: Path, holder: str = HOLDER, **cfg: object) -> Ledger:
    lc = LedgerConfig(flush_interval=60, **cfg)  # type: ignore[arg-type]
    return Ledger(store, lc, Metrics([], list), holder, journal=Journal(str(d), str(store.path), holder))


async def test_each_row_is_one_line_written_when_appended(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = Journal(str(d), DB, HOLDER)
    j.open()
    rows = [row(i) for i in range(3)]
    for r in rows:
        j.append(r)
    # in the file at once (no flush, no close): what a kill -9 right now would leave
    (path,) = journal_files(d)
    first, *rest = path.read_bytes().splitlines()
    assert orjson.loads(first) == {"fields": [f.name for f in fields(UsageRecord)]}
    assert [ln + b"\n" for ln in rest] == [line(r) for r in rows]
    assert parse_rows(path.read_bytes()) == (rows, 0)
    j.close(all_written=True)
    assert not d.exists()


async def test_a_killed_process_rows_are_replayed_once_and_spent_counted_once(tmp_path: Path, store: Store) -> None:
    d = tmp_path / "j"
    first = ledger(store, d)
    await first.recover()
    for i in range(10):
        first.append(row(i))
    assert await first.flush_once()  # 10 rows in the store...
    for i in range(10, 15):
        first.append(row(i))  # ...5 more only in memory and in the journal when the process dies
    assert books(tmp_path / DB) == (10, 2.5, 2.5)
    first._journal.close(all_written=False)  # type: ignore[union-attr] # its lock goes, as with kill -9

    again = ledger(store, d)
    await again.recover()
    assert books(tmp_path / DB) == (15, 3.75, 3.75)  # the 5 lost rows, and none of the 10 twice
    # the replayed journal is gone: a second restart has nothing to write twice
    assert [p.name for p in journal_files(d)] == [Path(again._journal.path).name]  # type: ignore[union-attr, arg-type]
    third = ledger(store, d, holder="host:8080:1")
    await third.recover()
    assert books(tmp_path / DB) == (15, 3.75, 3.75)
    await again.close()
    await third.close()


async def test_replaying_the_same_journal_twice_changes_nothing(tmp_path: Path, store: Store) -> None:
    d = tmp_path / "j"
    j = Journal(str(d), str(store.path), HOLDER)
    j.open()
    for i in range(4):
        j.append(row(i))
    saved = j.path
    assert saved is not None
    content = Path(saved).read_bytes()
    j.close(all_written=False)
    l1 = ledger(store, d, holder="other:1")
    await l1.recover()
    assert books(tmp_path / DB) == (4, 1.0, 1.0)
    Path(saved).write_bytes(content)  # the same rows again (say, a copy restored from a backup)
    l2 = ledger(store, d, holder="other:2")
    await l2.recover()
    assert books(tmp_path / DB) == (4, 1.0, 1.0)
    await l1.close()
    await l2.close()


async def test_the_replay_charges_the_dead_process_lease(tmp_path: Path, store: Store) -> None:
    d = tmp_path / "j"
    assert await store.lease("k1", HOLDER, 10.0, 0.25, 60) is not None
    j = Journal(str(d), str(store.path), HOLDER)
    j.open()
    for i in range(4):
        j.append(row(i))  # $1 settled against the lease, never written
    j.close(all_written=False)
    before = await store.leased("k1")
    await ledger(store, d).recover()  # the same slot restarted
    assert books(tmp_path / DB)[2] == 1.0
    assert await store.leased("k1") == pytest.approx(before - 1.0)  # moved from the lease into spent


async def test_rows_are_forgotten_once_the_store_holds_them(tmp_path: Path, store: Store) -> None:
    d = tmp_path / "j"
    lg = ledger(store, d, batch_size=3)
    await lg.recover()
    for i in range(5):
        lg.append(row(i))
    assert await lg.flush_once()  # 3 of 5 written: the 2 others keep the file; new rows go to a second one
    lg.append(row(5))
    assert len(journal_files(d)) == 2
    assert await lg.flush_once()  # rows 3, 4, 5: every row in the first file is in, so it goes
    assert len(journal_files(d)) == 1
    assert lines(d) == []  # and the second is emptied: nothing left to lose
    lg.append(row(6))
    assert len(lines(d)) == 1
    await lg.close()
    assert books(tmp_path / DB)[0] == 7
    assert journal_files(d) == []


async def test_a_torn_last_line_is_ignored(tmp_path: Path, store: Store) -> None:
    d = tmp_path / "j"
    j = Journal(str(d), str(store.path), HOLDER)
    j.open()
    for i in range(3):
        j.append(row(i))
    path = j.path
    assert path is not None
    j.close(all_written=False)
    whole = line(row(3))
    with open(path, "ab") as f:
        f.write(whole[: len(whole) // 2])  # the process died halfway through a write
    rows, bad = parse_rows(Path(path).read_bytes())
    assert [r.request_id for r in rows] == ["req_0", "req_1", "req_2"] and bad == 1
    await ledger(store, d).recover()
    assert books(tmp_path / DB)[0] == 3


async def test_a_failed_write_does_not_glue_the_next_row_to_its_remains(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = Journal(str(d), DB, HOLDER)
    j.open()
    j.append(row(0))
    assert j.path is not None
    with open(j.path, "ab") as f:
        f.write(b'["req_x",1700000000.0,"k1"')  # what a write cut short by a full disk leaves
    j._torn = True
    j.append(row(1))
    rows, bad = parse_rows(Path(j.path).read_bytes())
    assert [r.request_id for r in rows] == ["req_0", "req_1"] and bad == 1
    j.close(all_written=True)


def test_rows_of_a_journal_with_other_fields_are_read_by_name() -> None:
    # a journal left by another version of the relay: a field it did not have takes its default, and a
    # field this version does not know is left out
    names = [f.name for f in fields(UsageRecord) if f.name != "cost_usd"] + ["future_field"]
    r = row(1)
    data = orjson.dumps({"fields": names}) + b"\n" + orjson.dumps([*(getattr(r, n) for n in names[:-1]), 3]) + b"\n"
    assert parse_rows(data) == ([replace(r, cost_usd=0.0)], 0)


async def test_a_live_process_journal_is_left_alone(tmp_path: Path, store: Store) -> None:
    d = tmp_path / "j"
    alive = ledger(store, d, holder="host:8080:0")
    await alive.recover()
    alive.append(row(1))
    other = ledger(store, d, holder="host:8080:1")
    await other.recover()  # the other worker slot starts: slot 0 holds its lock, so it is not dead
    assert books(tmp_path / DB)[0] == 0
    assert len(journal_files(d)) == 2
    await alive.close()
    await other.close()
    assert books(tmp_path / DB)[0] == 1


async def test_a_journal_of_another_database_is_not_replayed(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    d = tmp_path / "j"
    j = Journal(str(d), str(tmp_path / "other.db"), HOLDER)
    j.open()
    j.append(row(1))
    j.close(all_written=False)
    lg = ledger(store, d)
    await lg.recover()
    assert books(tmp_path / DB)[0] == 0
    assert len(journal_files(d)) == 2
    assert "1 journals in " in caplog.text and "are of another database" in caplog.text
    await lg.close()


async def test_a_server_database_is_known_by_host_port_and_name_not_by_password(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = Journal(str(d), "postgresql://relay:old-secret@db.internal/relay", HOLDER)
    j.open()
    j.append(row(1))
    j.close(all_written=False)
    other = Journal(str(d), "postgresql://relay@db.internal:5432/other", HOLDER)
    assert [o async for o in other.orphans()] == []
    same = Journal(str(d), "postgres://relay:new-secret@db.internal:5432/relay?sslmode=require", HOLDER)
    found = [(o.holder, o.rows) async for o in same.orphans()]
    assert found == [(HOLDER, [row(1)])]
    assert not any("secret" in p.name for p in journal_files(d))


async def test_rows_the_store_did_not_take_at_shutdown_stay_for_the_next_start(tmp_path: Path, store: Store) -> None:
    d = tmp_path / "j"
    lg = ledger(store, d)
    await lg.recover()
    lg.append(row(1))
    real = store.write_usage

    async def failing(rows: object, holder: object = None) -> int:
        raise sqlite3.OperationalError("database is locked")

    store.write_usage = failing  # type: ignore[method-assign]
    await lg.close()
    store.write_usage = real  # type: ignore[method-assign]
    assert len(journal_files(d)) == 1
    await ledger(store, d).recover()
    assert books(tmp_path / DB)[0] == 1


async def test_an_unwritable_journal_dir_is_a_config_error(tmp_path: Path, store: Store) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    lg = ledger(store, blocker / "j")
    with pytest.raises(ConfigError, match=r"^ledger\.journal_dir: cannot keep the journal in "):
        await lg.recover()


def test_the_journal_is_off_when_asked_or_for_an_in_memory_database(tmp_path: Path) -> None:
    assert make_journal(LedgerConfig(journal=False), str(tmp_path / DB), HOLDER) is None
    assert make_journal(LedgerConfig(), ":memory:", HOLDER) is None
    j = make_journal(LedgerConfig(), str(tmp_path / DB), HOLDER)
    assert j is not None and j.directory == str(tmp_path / "relay-journal")
