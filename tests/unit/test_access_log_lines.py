"""The access log's lines are the ones logging itself would write, whichever way they are written."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from relay.access_log import ACCESS, LOG_FORMAT, AccessLog, AccessNote, LineFormatter


class _Request(dict):  # type: ignore[type-arg]
    """What the access log reads of a request."""

    path = "/v1/chat/completions"
    remote = "127.0.0.1"
    method = "POST"


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    r = logging.getLogger()
    handlers, level = r.handlers[:], r.level
    try:
        yield r
    finally:
        r.handlers[:] = handlers
        r.setLevel(level)


def _line(root: logging.Logger, formatter: logging.Formatter, fmt: str = "text") -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root.handlers[:] = [handler]
    request = _Request()
    request[ACCESS] = AccessNote("sk-abc1", "demo", "ok", 0.0123)  # type: ignore[index]
    AccessLog(fmt).write(request, "req_0001", 200, 0.0)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_relays_handler_writes_the_line_logging_would(root: logging.Logger, fmt: str) -> None:
    direct = _line(root, LineFormatter(LOG_FORMAT), fmt)  # the relay's own setup: written straight
    via_logging = _line(root, logging.Formatter(LOG_FORMAT), fmt)  # anything else: a record through logging
    assert direct.count("\n") == 1 and direct.endswith("\n")
    # the same line but for the moment it was written (the first 23 characters: 2026-01-31 12:00:00,123)
    # and the latency (measured as it was written)
    assert _untimed(direct) == _untimed(via_logging)
    assert direct[23:].startswith(
        " INFO relay.access: req_0001 sk-abc1 127.0.0.1 POST /v1/chat/completions model=demo status=200 end=ok "
        if fmt == "text" else ' INFO relay.access: {"ts":')
    assert direct[4] == "-" and direct[19] == ","


def _untimed(line: str) -> str:
    return re.sub(r'(latency_ms"?[=:]|"ts":)[0-9.]+', "", line[23:])


def test_line_formatter_timestamps_match_logging() -> None:
    fast, plain = LineFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    for created in (1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.5, 1_800_000_001.0004, 1_799_999_999.25):
        record = logging.LogRecord("relay", logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert fast.format(record) == plain.format(record)
