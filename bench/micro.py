"""CPU per request of the relay's own bookkeeping, measured in isolation (no sockets).

The end-to-end figures in RESULTS.md move by 10-20 % between rounds on a shared machine, more than the
few percent billing and rate limits cost; these loops measure those steps exactly as the request path
runs them, so their share of a request can be stated with confidence.

    python -m bench.micro      # prints one JSON object
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable

import orjson

from relay.auth import check_key
from relay.balances import Balances
from relay.billing import Pricing
from relay.config import BillingConfig, PriceConfig
from relay.limits import Limits, LocalLimiter
from relay.types import KeyRecord, RelayRequest, Usage
from relay.usage import estimate_prompt_tokens

N = 100_000


def _per_call_us(fn, n: int = N) -> float:
    for _ in range(1000):
        fn()
    started = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - started) / n * 1e6


class _Store:
    """Leases a key's whole balance at once, so the loop runs the request path's in-memory calls only."""

    async def lease(self, key_id: str, holder: str, need: float, fraction: float, ttl: float,
                    at_least: float | None = None) -> tuple[float, float]:
        return 1e9, 0.0

    async def renew_leases(self, holder: str, ttl: float) -> dict[str, float]:
        return {}

    async def release_leases(self, holder: str, key_ids: Iterable[str] | None = None) -> None:
        return None


async def _funded(key: KeyRecord, price: PriceConfig) -> Balances:
    """Balances holding a slice of the key's balance, as a serving process does after its first request."""
    balances = Balances(_Store(), "bench", ttl=3600)
    balances.start()
    balances.settle(await balances.reserve(key, 1e-6, price, 1.0), 0.0)
    await balances.close()  # the slice stays; no keeper task is left behind
    return balances


def measure() -> dict[str, float]:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    key = KeyRecord(
        id="key_1", name="bench", key_hash="h", prefix="sk-", granted_usd=1e9,
        rpm=100_000_000, rpd=1_000_000_000, tpm=100_000_000_000, tpd=1_000_000_000_000,
    )
    req = RelayRequest(
        id="r", endpoint="chat/completions", model="demo", body=orjson.dumps(body), json=body, stream=False,
        wants_usage=False, key=key, started=0.0,
    )
    pricing = Pricing({"demo": PriceConfig(input=1, output=2)}, BillingConfig())
    balances = asyncio.run(_funded(key, pricing.price("demo")))
    usage = Usage(9, 8, "upstream")

    keys = {"h" * 64: key}  # the key cache is a dict by hash

    def billing() -> None:
        record = keys["h" * 64]
        check_key(record, "127.0.0.1", ())
        price = pricing.price(req.model, req.endpoint)
        multiplier = pricing.multiplier(req.key.group)
        worst = pricing.worst_case(price, req, estimate_prompt_tokens(req)) * multiplier
        r = balances.try_reserve(req.key, worst, price, multiplier)  # the slice in hand covers it: no await
        assert r is not None
        balances.settle(r, pricing.cost(price, req, usage) * multiplier)

    limiter = LocalLimiter()

    def limits() -> None:
        lim = Limits.of(req.key)
        limiter.try_acquire(req.key.id, lim, 4100, 0)
        limiter.settle(req.key.id, lim, 4100, usage.total_tokens)

    return {"billing_and_keys_us_per_request": round(_per_call_us(billing), 2),
            "limits_us_per_request": round(_per_call_us(limits), 2)}


if __name__ == "__main__":
    print(json.dumps(measure()))
