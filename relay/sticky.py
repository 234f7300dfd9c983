"""Sticky routing: requests carrying the same value (a prompt-cache key, a user id, with the client key and
model) keep to one account, because upstream prompt caches are per account. Pure: no I/O.

A value is bound by rendezvous hashing over the accounts that may take it, so every process binds the same
value to the same account without talking. A binding holds while it is used at least every `ttl` seconds and
its account stays ready; at most 100,000 are kept (one is about 200 bytes), least recently used dropped first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["StickyBindings"]

_MAX = 100_000


class _Named(Protocol):
    @property
    def uid(self) -> str: ...


A = TypeVar("A", bound=_Named)


class StickyBindings(Generic[A]):
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.hits = self.misses = 0
        self._bound: OrderedDict[str, tuple[A, float]] = OrderedDict()

    def get(self, value: str, now: float, ready: Callable[[A], bool]) -> A | None:
        """The account `value` is bound to, if the binding is live and the account `ready`."""
        bound = self._bound.get(value)
        if bound is None or bound[1] <= now or not ready(bound[0]):
            return None
        self.hits += 1
        self._keep(value, bound[0], now)
        return bound[0]

    def bind(self, value: str, candidates: Sequence[A], now: float) -> A:
        """Bind `value` to one of `candidates` (not empty): the same one in every process."""
        acc = max(candidates, key=lambda a: hashlib.blake2b(f"{value}\0{a.uid}".encode(), digest_size=8).digest())
        self.misses += 1
        self._keep(value, acc, now)
        while len(self._bound) > _MAX:
            self._bound.popitem(last=False)
        return acc

    def keep_only(self, accounts: Container[A]) -> None:
        """Drop the bindings to accounts no longer configured."""
        for value, (acc, _) in list(self._bound.items()):
            if acc not in accounts:
                del self._bound[value]

    def _keep(self, value: str, acc: A, now: float) -> None:
        self._bound[value] = (acc, now + self.ttl)
        self._bound.move_to_end(value)
