"""The balance endpoints' cache: a widget polling its figure costs one ledger query per key and window every
few seconds, and the cache stays bounded."""

from __future__ import annotations

from typing import Any

from relay import web_billing
from relay.auth import ConfigKeys
from relay.web_billing import BillingDeps


class CountingStore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []
        self.value = 1.25

    async def spent_between(self, key_id: str, since: float, until: float) -> float:
        self.calls.append((key_id, since, until))
        return self.value


async def test_answers_are_kept_a_few_seconds_per_key_and_window() -> None:
    now = [100.0]
    store = CountingStore()
    deps = BillingDeps(ConfigKeys([]), store, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await deps.spent("a", 0, 10) == 1.25
    store.value = 2.0
    assert await deps.spent("a", 0, 10) == 1.25  # cached
    assert await deps.spent("b", 0, 10) == 2.0  # another key is its own entry
    assert await deps.spent("a", 0, 20) == 2.0  # and so is another window
    now[0] += 5.1
    assert await deps.spent("a", 0, 10) == 2.0
    assert len(store.calls) == 4


async def test_the_cache_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(web_billing, "_CACHE_MAX", 3)
    store = CountingStore()
    deps = BillingDeps(ConfigKeys([]), store)  # type: ignore[arg-type]
    for i in range(10):
        await deps.spent(f"k{i}", 0, 1)
    assert len(deps.cache) == 3
    assert [k for k, _, _ in deps.cache] == ["k7", "k8", "k9"]
