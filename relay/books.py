"""What a request leaves behind when it ends, whatever its outcome: its limits and budget settled, its
charge settled against its reservation, its ledger row, its metrics and its availability outcome.

`Trace` is what the pipeline (relay.proxy) noted on the way; `Books.record` turns it into all of that, in
memory only (the ledger and the availability history are written in the background).
"""

from __future__ import annotations

import time

from .availability import AvailabilityRecorder
from .balances import Balances, Reservation
from .billing import Pricing
from .ledger import Ledger
from .limits import Limiter, Limits
from .metrics import Metrics
from .router import Account, Router
from .types import KeyRecord, RelayRequest, Usage, UsageRecord
from .usage import usage_when_missing

__all__ = ["Books", "Trace"]


class Trace:
    """What one request did; becomes its ledger row."""

    __slots__ = (
        "acc",
        "account",
        "attempts",
        "channel",
        "client",
        "completion_tokens",
        "end_reason",
        "exhausted",
        "limit_tokens",
        "limits",
        "reservation",
        "status",
        "ttft",
        "usage",
    )

    def __init__(self) -> None:
        self.status = 0
        self.end_reason = "ok"
        self.channel: str | None = None
        self.account: int | None = None
        self.attempts = 0
        self.usage: Usage | None = None
        self.ttft: float | None = None
        self.completion_tokens: int | None = None  # counted from delivered text when usage is missing
        self.reservation: Reservation | None = None
        self.limits: Limits | None = None  # the key's limits, when it has any (settled at the end)
        self.limit_tokens = 0  # the token estimate the limits (and the account's budget) admitted
        self.acc: Account | None = None  # the account of the last attempt
        self.exhausted = False  # no account could serve (every one failed, rested or was rate limited)
        self.client: str | None = None  # the client's address (behind trusted proxies: the one they forward)


class Books:
    def __init__(
        self, limiter: Limiter, router: Router, balances: Balances, pricing: Pricing, ledger: Ledger,
        metrics: Metrics, availability: AvailabilityRecorder | None,
    ) -> None:
        self._limiter = limiter
        self._router = router
        self._balances = balances
        self._pricing = pricing
        self._ledger = ledger
        self._metrics = metrics
        self._availability = availability

    def record_rejected(
        self, request_id: str, key_id: str, endpoint: str, model: str, status: int, started: float,
        client: str | None = None,
    ) -> None:
        """A request of a known key refused before it was relayed (bad body, unknown model...)."""
        req = RelayRequest(
            id=request_id, endpoint=endpoint, model=model, body=b"", json=None, stream=False,
            wants_usage=False, key=KeyRecord(key_id, "", "", ""), started=started,
        )
        trace = Trace()
        trace.status, trace.end_reason, trace.client = status, "rejected", client
        self.record(req, trace)

    def record(self, req: RelayRequest, trace: Trace) -> None:
        now = time.monotonic()
        latency = now - req.started
        usage = trace.usage
        if usage is None:
            usage = usage_when_missing(req, trace.completion_tokens) if trace.status and trace.status < 400 else Usage()
        if trace.limits is not None:
            self._limiter.settle(req.key.id, trace.limits, trace.limit_tokens, usage.total_tokens)
        if trace.acc is not None:
            self._router.settle_budget(trace.acc, trace.limit_tokens, usage.total_tokens)
        cost = 0.0
        r = trace.reservation
        if r is not None:
            cost = self._balances.settle(r, self._pricing.cost(r.price, req, usage) * r.multiplier)
        self._ledger.append(
            UsageRecord(
                request_id=req.id,
                ts=time.time() - latency,
                key_id=req.key.id,
                model=req.model,
                endpoint=req.endpoint,
                channel=trace.channel,
                account=trace.account,
                status=trace.status or 500,
                end_reason=trace.end_reason,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                usage_source=usage.source,
                latency_ms=round(latency * 1000, 3),
                ttft_ms=None if trace.ttft is None else round(trace.ttft * 1000, 3),
                stream=req.stream,
                attempts=trace.attempts,
                cost_usd=cost,
                cache_read_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                client=trace.client,
            )
        )
        self._metrics.observe_request(
            req.model, trace.channel, trace.status or 500, latency, trace.ttft,
            usage.prompt_tokens, usage.completion_tokens,
        )
        if self._availability is not None:  # a dict update: the history is written in the background
            first_byte = latency if trace.ttft is None else trace.ttft
            self._availability.observe_request(
                req.model, trace.channel, trace.status or 500, trace.end_reason, first_byte * 1000, trace.exhausted,
            )
