"""A log line that a flood cannot multiply: at most one per interval, saying how many were left out.

For events any unauthenticated client can cause (bad keys, malformed HTTP): the operator sees that they
happen and how often, and the log stays readable whatever the rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["QuietLog"]


class QuietLog:
    __slots__ = ("_clock", "_interval", "_log", "_next", "_skipped")

    def __init__(self, log: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._skipped = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self._skipped += 1
            return
        if self._skipped:
            message += f" ({self._skipped} more like it in the last {self._interval:.0f}s)"
        self._next, self._skipped = now + self._interval, 0
        self._log.warning(message, *args)
