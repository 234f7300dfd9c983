"""The ledger's journal: every usage row is in the kernel before its answer ends, so kill -9 loses none.

Each process appends its rows to a file of its own in `ledger.journal_dir`, one line per row (a JSON array
of the UsageRecord's fields, named once by the file's first line), with one `os.write` when the row is
recorded: the request path never waits for a disk, and the kernel keeps what was written when the process
is killed. The flusher fsyncs the journal once per
flush interval (so only a machine crash can lose rows: those appended since the last fsync), and forgets
rows once the store holds them: with everything written the file is truncated; otherwise new rows go to a
second file and the first is removed once its last row is written (so at most two files per process).

A live process holds an exclusive `flock` on each of its files. A file nobody holds belongs to a process
that is gone: the ledger replays it into the store (idempotent: the stores skip request ids already
written, and add to spent only what they insert) and removes it. File names carry a hash of the database
(a journal is only ever replayed into its own database), the process's balance-lease holder (the replay
lowers that holder's lease by what it adds to spent, as the dead process's own write would have) and a
random token:  <db hash>.<holder>.<token>-<n>.journal
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import hashlib
import logging
import operator
import os
import time
from collections.abc import AsyncIterator
from urllib.parse import quote, unquote, urlsplit

import orjson

from .config import LedgerConfig
from .types import UsageRecord

__all__ = ["DEFAULT_DIR", "Journal", "Orphan", "default_dir", "make_journal", "parse_rows"]

log = logging.getLogger("relay.ledger")

DEFAULT_DIR = "relay-journal"
_SUFFIX = ".journal"
_NAMES = tuple(f.name for f in dataclasses.fields(UsageRecord))
_FIELDS = frozenset(_NAMES)
# Rows are arrays, the names said once per file: a 17-key object costs orjson about 3x an array's time.
_VALUES = operator.attrgetter(*_NAMES)
_HEADER = orjson.dumps({"fields": _NAMES}, option=orjson.OPT_APPEND_NEWLINE)
_DUMPS_OPTS = orjson.OPT_APPEND_NEWLINE


def default_dir(database: str) -> str:
    """Next to a SQLite file; in the working directory for a PostgreSQL URL."""
    if "://" in database:
        return os.path.abspath(DEFAULT_DIR)
    return os.path.join(os.path.dirname(os.path.abspath(database)), DEFAULT_DIR)


def make_journal(cfg: LedgerConfig, database: str, holder: str) -> Journal | None:
    """The journal the config asks for (none for an in-memory database: nothing would outlive the process)."""
    if not cfg.journal or database == ":memory:":
        return None
    return Journal(cfg.journal_dir or default_dir(database), database, holder)


def _tag(database: str) -> str:
    if "://" in database:  # a server's database: not its user, password or options, which may change
        u = urlsplit(database)
        database = f"{u.hostname}:{u.port or 5432}{u.path}"
    return hashlib.sha256(database.encode()).hexdigest()[:12]


def _encode(holder: str) -> str:
    return quote(holder, safe="").replace(".", "%2E")  # no dot: the name's fields are split on dots


def _same_file(fd: int, path: str) -> bool:
    """The path still names the file open on fd (another process may have replayed and removed it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def parse_rows(data: bytes) -> tuple[list[UsageRecord], int]:
    """The rows in a journal's bytes, and how many lines were unreadable (a torn last write, say)."""
    rows: list[UsageRecord] = []
    bad = 0
    names: list[str] | None = None
    for line in data.split(b"\n"):
        if not line.strip(b"\0 \t\r"):
            continue  # an empty line, or the zeros a machine crash can leave at a file's end
        try:
            v = orjson.loads(line)
            if isinstance(v, dict):  # the file's first line: the names of the fields, in order
                names = list(v["fields"])
                continue
            if names is None or not isinstance(v, list):
                raise TypeError("a row before the names")
            rows.append(UsageRecord(**{k: x for k, x in zip(names, v) if k in _FIELDS}))
        except (orjson.JSONDecodeError, TypeError, KeyError):
            bad += 1
    return rows, bad


class _File:
    __slots__ = ("dirty", "end", "fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.end = 0  # the journal's row count when this file stopped taking rows
        self.dirty = False  # written since its last fsync


class Orphan:
    """A journal of a process that is gone, locked by this one until `done` (replayed: removed) or `release`."""

    __slots__ = ("_fd", "holder", "path", "rows", "unreadable")

    def __init__(self, path: str, fd: int, holder: str | None, rows: list[UsageRecord], unreadable: int) -> None:
        self.path = path
        self.holder = holder
        self.rows = rows
        self.unreadable = unreadable
        self._fd: int | None = fd

    def done(self) -> None:
        """Its rows are in the store: remove the file (while still holding its lock), then let go."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Journal:
    """This process's journal. `append` is what the request path calls; the ledger's flusher calls the rest."""

    def __init__(self, directory: str, database: str, holder: str) -> None:
        self.directory = directory
        self.holder = holder
        self._prefix = f"{_tag(database)}."
        self._stem = f"{self._prefix}{_encode(holder)}.{os.urandom(4).hex()}"
        self._n = 0
        self._active: _File | None = None
        self._old: _File | None = None
        self._appended = 0  # rows appended since the journal was made
        self._written = 0  # of those, rows the store took (always the oldest: the ledger writes in order)
        self._start = 0  # the row count when the active file was last empty
        self._torn = False  # the last write failed, maybe halfway: the next one starts on a new line
        self._dir_dirty = False

    @property
    def path(self) -> str | None:
        return None if self._active is None else self._active.path

    def files(self) -> list[str]:
        return [f.path for f in (self._old, self._active) if f is not None]

    def open(self) -> None:
        """Create this process's file (OSError if the directory cannot be written)."""
        if self._active is None:
            self._active = self._create()
            self._start = self._appended

    # -- the request path -----------------------------------------------------------------------------

    def append(self, row: UsageRecord) -> None:
        self._appended += 1
        f = self._active
        if f is None:
            return
        data = orjson.dumps(_VALUES(row), option=_DUMPS_OPTS)
        if self._torn:
            data = b"\n" + data  # whatever a failed write left stays on a line of its own, ignored at replay
        try:
            n = os.write(f.fd, data)
            while n < len(data):  # a regular file writes short only when the disk is full: try the rest
                n += os.write(f.fd, data[n:])
        except OSError as e:
            if not self._torn:
                log.error("ledger journal: cannot write %s (%s); usage rows are only in memory until it can",
                          f.path, e.strerror)
            self._torn = True
            return
        if self._torn:
            log.warning("ledger journal: %s takes rows again", f.path)
            self._torn = False
        f.dirty = True

    # -- the flusher ----------------------------------------------------------------------------------

    def written(self, n: int) -> None:
        """The store took the `n` oldest rows not yet written: forget what no file needs any more."""
        self._written += n
        old = self._old
        if old is not None and self._written >= old.end:
            self._old = None
            self._remove(old)
        f = self._active
        if f is None or self._start >= self._appended:
            return  # the active file holds no row
        try:
            if self._written >= self._appended:
                os.ftruncate(f.fd, len(_HEADER))  # every row it held is in the store: only the names stay
                self._start = self._appended
                self._torn = False
            elif self._old is None:
                new = self._create()  # new rows go there; this one goes once its last row is written
                f.end = self._appended
                self._old, self._active, self._start = f, new, self._appended
        except OSError as e:
            log.error("ledger journal: cannot rotate %s (%s); it keeps growing until it can", f.path, e.strerror)

    async def sync(self) -> None:
        """fsync what was appended since the last call (in a thread: the loop goes on serving meanwhile)."""
        fds = []
        for f in (self._old, self._active):
            if f is not None and f.dirty:
                f.dirty = False
                fds.append(f.fd)
        sync_dir, self._dir_dirty = self._dir_dirty, False
        if fds or sync_dir:
            try:
                await asyncio.to_thread(_fsync, fds, self.directory if sync_dir else None)
            except OSError as e:
                log.error("ledger journal: fsync failed (%s)", e.strerror)

    def close(self, all_written: bool) -> None:
        """Let go of the files: removed when the store holds every row, else kept for the next start."""
        for f in (self._old, self._active):
            if f is None:
                continue
            if all_written:
                self._remove(f)
                continue
            try:
                os.fsync(f.fd)
            except OSError:
                pass
            os.close(f.fd)
        self._old = self._active = None
        if all_written:
            try:
                os.rmdir(self.directory)  # only when empty: other processes' journals stay
            except OSError:
                pass

    async def orphans(self, wait_own: float = 0.0) -> AsyncIterator[Orphan]:
        """Journals of this database that no live process holds, each locked while the caller replays it.

        A journal with this process's own holder name (its previous run) may be held for a moment by
        another process replaying it: wait up to `wait_own` seconds for that one to finish, so this
        process takes its balance lease back only once the lease was charged for those rows.
        """
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return
        mine = set(self.files())
        for name in names:
            if not (name.startswith(self._prefix) and name.endswith(_SUFFIX)):
                continue
            path = os.path.join(self.directory, name)
            if path in mine:
                continue
            parts = name[: -len(_SUFFIX)].split(".")
            holder = unquote(parts[1]) if len(parts) == 3 else None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("ledger journal: cannot read %s (%s): its rows are not written", path, e.strerror)
                continue
            orphan: Orphan | None = None
            try:
                locked = _try_lock(fd)
                deadline = time.monotonic() + (wait_own if holder == self.holder else 0.0)
                while not locked and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    locked = _try_lock(fd)
                if not locked or not _same_file(fd, path):
                    continue  # alive, or already replayed by another process
                data = await asyncio.to_thread(_read, fd)
                rows, bad = parse_rows(data)
                orphan = Orphan(path, fd, holder, rows, bad)
                yield orphan
            finally:
                if orphan is not None:
                    orphan.release()
                else:
                    os.close(fd)

    def strays(self) -> int:
        """Journals in the directory of another database that no live process holds (never replayed here)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        n = 0
        for name in names:
            if name.endswith(_SUFFIX) and not name.startswith(self._prefix):
                try:
                    fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                n += _try_lock(fd)
                os.close(fd)
        return n

    # -- files ----------------------------------------------------------------------------------------

    def _create(self) -> _File:
        for _ in range(10):
            self._n += 1
            path = os.path.join(self.directory, f"{self._stem}-{self._n}{_SUFFIX}")
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except (FileExistsError, FileNotFoundError):  # a name taken, or the directory removed meanwhile
                continue
            # Between the create and the lock another process may take it for a dead one's and remove it.
            if _try_lock(fd) and _same_file(fd, path):
                try:
                    os.write(fd, _HEADER)
                except OSError:
                    os.close(fd)
                    os.unlink(path)
                    raise
                self._dir_dirty = True
                return _File(path, fd)
            os.close(fd)
        raise OSError(errno.EAGAIN, "could not create a journal file", self.directory)

    def _remove(self, f: _File) -> None:
        try:
            os.unlink(f.path)
        except OSError as e:
            log.error("ledger journal: cannot remove %s (%s)", f.path, e.strerror)
        os.close(f.fd)


def _read(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _fsync(fds: list[int], directory: str | None) -> None:
    for fd in fds:
        os.fsync(fd)
    if directory is not None:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
