"""The worker supervisor without sockets: back-off, status words, the shared counter, stop and parent death.

Each supervisor runs in a child `python -c` process of its own (it installs signal handlers and forks).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from relay.workers import MAX_BACKOFF, RestartCounter, backoff, describe_status

ROOT = Path(__file__).resolve().parents[2]


def test_backoff_starts_after_the_second_quick_death_and_is_capped() -> None:
    assert [backoff(n) for n in range(5)] == [0.0, 0.0, 1.0, 2.0, 4.0]
    assert backoff(100) == MAX_BACKOFF


def test_describe_status_names_the_signal_or_the_exit_code() -> None:
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert describe_status(status) == "killed by signal 9 (SIGKILL)"
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert describe_status(status) == "exited with status 3"


def test_a_process_forked_before_the_count_changes_sees_it() -> None:
    counter = RestartCounter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # waits for the parent's go, then reports what it reads
        os.close(w)
        os.read(r, 1)
        os._exit(counter.value())
    os.close(r)
    counter.add()
    counter.add()
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2


def _supervisor(tmp_path: Path, work: str, pre: str = "pass", workers: int = 2) -> subprocess.Popen[str]:
    """A `python -c` parent running supervise(workers, work); each worker runs `pre`, writes its pid to
    tmp_path/<pid>, then runs `work`."""
    code = textwrap.dedent(f"""
        import logging, os, signal, sys, time
        from pathlib import Path
        from relay.workers import RestartCounter, supervise
        logging.basicConfig(level="INFO", stream=sys.stderr)
        def work(slot):
            {pre}
            Path({str(tmp_path)!r}, str(os.getpid())).write_text(str(slot))
            {work}
        sys.exit(supervise({workers}, work, RestartCounter(), stop_timeout=10))
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _pids(tmp_path: Path) -> set[int]:
    return {int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


SERVE = "signal.sigwait({signal.SIGTERM}); return 0"  # a worker that runs until SIGTERM, then exits cleanly


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_every_worker_and_the_parent_exits_0(tmp_path: Path) -> None:
    proc = _supervisor(tmp_path, SERVE, pre="signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})")
    try:
        _wait(lambda: len(_pids(tmp_path)) == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not any(_alive(p) for p in _pids(tmp_path))
        assert len(_pids(tmp_path)) == 2  # nothing was restarted while stopping
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_a_configuration_error_in_a_first_worker_stops_the_command_with_2(tmp_path: Path) -> None:
    proc = _supervisor(tmp_path, "return 2")
    try:
        assert proc.wait(timeout=15) == 2
        _, err = proc.communicate(timeout=10)
        assert "could not start (configuration)" in err
        assert "restarted as" not in err and len(_pids(tmp_path)) <= 2  # no retry (the other may be stopped first)
    finally:
        proc.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    proc = _supervisor(tmp_path, "time.sleep(60); return 0")  # SIGTERM (the default action) ends them
    try:
        _wait(lambda: len(_pids(tmp_path)) == 2)
        workers = _pids(tmp_path)
        proc.kill()
        proc.wait(timeout=10)
        _wait(lambda: not any(_alive(p) for p in workers))
    finally:
        proc.kill()
        proc.communicate(timeout=10)
