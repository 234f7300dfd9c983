"""The parent of `relay serve --workers N`: forks the workers, restarts those that die, stops them all.

A worker that exits while the parent is not stopping (killed by a signal, a crash, or even a clean exit after
someone sent it alone a SIGTERM) is restarted in its slot, at once. A slot whose workers keep dying within
QUICK_DEATH of their start waits 1 s, then 2, 4 ... up to MAX_BACKOFF before each further restart, so a worker
that cannot start never makes the parent spin. Exit status 2 from a first worker is a configuration error
found at start (an unreachable Redis, say): no retry can fix it, so the command stops with status 2, as it
does with one worker.

SIGTERM/SIGINT to the parent: forwarded to every worker and no more restarts; the parent waits for the
workers to drain and exits 0 when all exit cleanly (1 otherwise; after `stop_timeout` it kills what is left).
A worker asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), so none is left behind.

The parent sleeps in select() on a self-pipe that every signal writes to (signal.set_wakeup_fd): it wakes for
a death, a signal or a restart that is due, never to poll.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

__all__ = ["CONFIG_ERROR", "MAX_BACKOFF", "QUICK_DEATH", "RestartCounter", "backoff", "describe_status", "supervise"]

log = logging.getLogger("relay")

QUICK_DEATH = 1.0  # seconds: a worker that dies sooner than this after its start failed to start
MAX_BACKOFF = 30.0  # seconds: the longest a slot waits between two restarts
CONFIG_ERROR = 2  # exit status of a worker (and of the command) for a configuration error
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class RestartCounter:
    """Worker restarts so far: written by the parent, read by every worker.

    Eight bytes of anonymous shared memory (MAP_SHARED), mapped before the first fork, so workers started
    before a restart see it too. One writer, aligned 64-bit loads and stores: no lock is needed.
    """

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, 8)
        self._cell = ctypes.c_uint64.from_buffer(self._mem)

    def value(self) -> int:
        return int(self._cell.value)

    def add(self) -> None:
        self._cell.value += 1


@dataclass
class _Slot:
    index: int
    pid: int = 0  # 0: not running
    started: float = 0.0
    first: bool = True  # the worker running (or last run) is the slot's first
    quick_deaths: int = 0  # deaths in a row within QUICK_DEATH of their start
    due: float = 0.0  # when the dead slot's restart is due (monotonic)
    delay: float = 0.0  # its back-off, seconds
    dead: tuple[int, int] = (0, 0)  # the dead worker's pid and wait status, for the restart's log line


def describe_status(status: int) -> str:
    """A wait status in words: `exited with status 1`, `killed by signal 9 (SIGKILL)`."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def backoff(quick_deaths: int) -> float:
    """Seconds before a restart: none after a worker that ran a while or one death at start, then 1, 2, 4 ..."""
    if quick_deaths < 2:
        return 0.0
    return float(min(MAX_BACKOFF, 2.0 ** (quick_deaths - 2)))


def supervise(workers: int, work: Callable[[int], int], restarts: RestartCounter, stop_timeout: float) -> int:
    """Run `work(slot)` in `workers` forked processes, restarting them, until SIGTERM/SIGINT.

    `work` runs in the child and returns the child's exit status. Returns the parent's: 0 when every worker
    exited cleanly after the stop.
    """
    return _Supervisor(workers, work, restarts, stop_timeout).run()


class _Supervisor:
    def __init__(self, workers: int, work: Callable[[int], int], restarts: RestartCounter, stop_timeout: float):
        self.slots = [_Slot(i) for i in range(workers)]
        self.work = work
        self.restarts = restarts
        self.stop_timeout = stop_timeout
        self.parent = os.getpid()
        self.signalled: int | None = None  # the stop signal, once one came
        self.stop_at: float | None = None  # the stop's deadline, once stopping
        self.status = 0
        self.rfd, self.wfd = os.pipe()
        for fd in (self.rfd, self.wfd):
            os.set_blocking(fd, False)
        self.previous: dict[int, Any] = {}
        self.old_wakeup = -1

    def run(self) -> int:
        for sig in _STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._on_signal)
        self.previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_signal)
        self.old_wakeup = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        try:
            for slot in self.slots:
                self._spawn(slot)
            while self._step():
                pass
        finally:
            signal.set_wakeup_fd(self.old_wakeup)
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            os.close(self.rfd)
            os.close(self.wfd)
        return self.status

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # runs in the parent only (a child resets the handlers first thing, but a signal may come before)
        if os.getpid() == self.parent and signum in _STOP_SIGNALS and self.signalled is None:
            self.signalled = signum

    def _step(self) -> bool:
        """One turn: start the stop, restart what is due, sleep until something happens, reap. False: done."""
        now = time.monotonic()
        if self.signalled is not None and self.stop_at is None:
            log.info("%s: stopping %d workers", signal.Signals(self.signalled).name, len(self.slots))
            self._stop(now)
        if self.stop_at is None:
            for slot in self.slots:
                if not slot.pid and slot.due <= now:
                    self._restart(slot)
        running = [s for s in self.slots if s.pid]
        if self.stop_at is not None and not running:
            return False
        timeout: float | None = None
        if self.stop_at is not None:
            if now >= self.stop_at:
                log.error("%d workers still running %.0f s after the stop: killing them", len(running), self.stop_timeout)
                for slot in running:
                    _kill(slot.pid, signal.SIGKILL)
                self.status = 1
                self.stop_at = now + 5.0  # SIGKILL takes effect at once; this only bounds the wait
            timeout = self.stop_at - now
        else:
            waiting = [s.due for s in self.slots if not s.pid]
            timeout = max(0.0, min(waiting) - now) if waiting else None
        self._sleep(timeout)
        self._reap()
        return True

    def _stop(self, now: float) -> None:
        self.stop_at = now + self.stop_timeout
        for slot in self.slots:
            _kill(slot.pid, signal.SIGTERM)

    def _spawn(self, slot: _Slot) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                self._child_setup()
                code = self.work(slot.index)
            except BaseException:  # noqa: BLE001 - said, then the supervisor restarts it
                log.exception("worker %d failed", slot.index)
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:  # noqa: BLE001 - exiting regardless
                        pass
                os._exit(code)
        slot.pid, slot.started = pid, time.monotonic()

    def _child_setup(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        os.close(self.rfd)
        os.close(self.wfd)
        _die_with_parent(self.parent)

    def _restart(self, slot: _Slot) -> None:
        old_pid, old_status = slot.dead
        slot.first = False
        try:
            self._spawn(slot)
        except OSError as e:  # out of processes or memory for now: try again later
            slot.delay = max(1.0, slot.delay)
            slot.due = time.monotonic() + slot.delay
            log.error("worker %d (pid %d) %s; cannot start another (%s)", slot.index, old_pid,
                      describe_status(old_status), e.strerror)
            return
        self.restarts.add()
        log.warning(
            "worker %d (pid %d) %s; restarted as pid %d%s", slot.index, old_pid, describe_status(old_status),
            slot.pid, f" after a {slot.delay:.0f} s back-off" if slot.delay else "",
        )

    def _sleep(self, timeout: float | None) -> None:
        select.select([self.rfd], [], [], timeout)
        try:
            while os.read(self.rfd, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        now = time.monotonic()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            code = os.waitstatus_to_exitcode(status)
            if self.stop_at is not None:
                if code != 0:
                    log.warning("worker %d (pid %d) %s while stopping", slot.index, pid, describe_status(status))
                    self.status = self.status or 1
                continue
            if slot.first and code == CONFIG_ERROR:
                log.error("worker %d (pid %d) could not start (configuration): stopping", slot.index, pid)
                self.status = CONFIG_ERROR
                self._stop(now)
                continue
            slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started < QUICK_DEATH else 0
            slot.delay = backoff(slot.quick_deaths)
            slot.due = now + slot.delay
            slot.dead = (pid, status)


def _kill(pid: int, sig: int) -> None:
    if pid:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _die_with_parent(parent: int) -> None:
    """Ask for SIGTERM (a graceful drain) when the parent dies; Linux only, elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request: nobody would send it
        os._exit(1)
