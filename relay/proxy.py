"""The relay pipeline, the one module that knows every step:

    reserve the worst-case cost -> rate limits -> route (channel, account) -> adapter builds the upstream request
        -> upstream I/O -> passthrough or translated stream -> usage -> settle -> ledger -> metrics

Failover happens only before the first byte reaches the client: until then a failed attempt moves on to
the next account; after it, a failure ends the stream with an error event. Every request of a known key,
whatever its outcome, leaves exactly one ledger row (a refused one through `record_rejected`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from aiohttp import web

from .access_log import ACCESS, AccessNote
from .adapters import adapter_for
from .adapters.base import Adapter
from .availability import AvailabilityRecorder
from .balances import Balances
from .billing import Pricing, output_limit
from .bindings import ResponseBindings
from .books import Books, Trace
from .config import Config
from .endpoints import ENDPOINTS, Endpoint, mode_for
from .errors import InvalidRequest, RateLimited, RelayError, UpstreamFailure, UpstreamUnavailable
from .ledger import Ledger
from .limits import Limiter, Limits
from .metrics import Metrics
from .proxy_stream import StreamReplies
from .redact import redact
from .router import Account, Router
from .types import RelayRequest, Usage, with_egress
from .upstream import Upstream
from .usage import estimate_prompt_tokens

__all__ = ["RATE_LIMIT_HEADERS", "Proxy"]

# The x-ratelimit-* headers of the request's key, added to whatever response it gets.
RATE_LIMIT_HEADERS = web.RequestKey("rate_limit_headers", dict)

log = logging.getLogger("relay.proxy")



class Proxy(StreamReplies):
    def __init__(
        self, cfg: Config, router: Router, upstream: Upstream, ledger: Ledger, metrics: Metrics,
        pricing: Pricing, balances: Balances, limiter: Limiter, bindings: ResponseBindings,
        availability: AvailabilityRecorder | None = None,
    ) -> None:
        self._bindings = bindings
        self._retry = cfg.retry
        # Retry-After when no failed account is back on its own: the next probe may bring one back
        self._default_wait = cfg.health.interval if cfg.health.enabled else cfg.retry.failure_cooldown
        self._limiter = limiter
        self._max_output = cfg.billing.max_output_tokens
        self._pricing = pricing
        self._balances = balances
        self._router = router
        self._upstream = upstream
        self._ledger = ledger
        self._metrics = metrics
        self._inflight: set[asyncio.Task[object]] = set()
        self._draining = False
        self._books = Books(limiter, router, balances, pricing, ledger, metrics, availability)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """On shutdown: let in-flight requests finish for `grace` seconds, then end the rest.

        A stream still running then gets an error event (the client sees a failure, not a cut answer).
        """
        if self._inflight:
            log.info("draining %d in-flight requests (up to %.0fs)", len(self._inflight), grace)
            await asyncio.wait(set(self._inflight), timeout=grace)
        self._draining = True
        rest = set(self._inflight)
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=5)

    # -- the pipeline -----------------------------------------------------------------------------------

    async def relay(self, request: web.Request, req: RelayRequest) -> web.StreamResponse:
        trace = Trace()
        trace.client = request.remote
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            price = self._pricing.price(req.model, req.endpoint)
            multiplier = self._pricing.multiplier(req.key.group)
            prompt = estimate_prompt_tokens(req)
            worst = self._pricing.worst_case(price, req, prompt) * multiplier
            reservation = self._balances.try_reserve(req.key, worst, price, multiplier)
            if reservation is None:  # this process's slice of the balance must grow first
                reservation = await self._balances.reserve(req.key, worst, price, multiplier)
            trace.reservation = reservation
            # requests that are not billed (token counts, calls on a stored response) count as requests only
            unbilled = ENDPOINTS[req.endpoint].pricing == "none"
            trace.limit_tokens = 0 if unbilled else prompt + self._output_estimate(req)
            limits = Limits.of(req.key)
            if limits.any:
                images = _images(req)
                decision = self._limiter.try_acquire(req.key.id, limits, trace.limit_tokens, images)
                if decision is None:
                    decision = await self._limiter.acquire(req.key.id, limits, trace.limit_tokens, images)
                if decision.headers:
                    request[RATE_LIMIT_HEADERS] = decision.headers
                if not decision.allowed:
                    raise decision.error()
                trace.limits = limits
            return await self._attempts(request, req, trace)
        except RelayError as e:
            trace.status = e.status
            trace.end_reason = "upstream_error" if e.status >= 500 else "rejected"
            raise
        except asyncio.CancelledError:
            trace.status = trace.status or 499
            trace.end_reason = "shutdown" if self._draining else "client_disconnected"
            raise
        finally:
            self._inflight.discard(task)
            self._books.record(req, trace)
            request[ACCESS] = AccessNote(req.key.prefix, req.model, trace.end_reason, trace.ttft)

    async def answer_locally(self, request: web.Request, req: RelayRequest, body: bytes) -> web.Response:
        """A request the relay answers itself (a token count on a channel that has none): the key's request
        limits apply; nothing is relayed or billed, and its ledger row counts no tokens."""
        trace = Trace()
        trace.client = request.remote
        trace.usage = Usage(0, 0, "estimate")
        try:
            limits = Limits.of(req.key)
            if limits.any:
                decision = self._limiter.try_acquire(req.key.id, limits, 0, 0)
                if decision is None:
                    decision = await self._limiter.acquire(req.key.id, limits, 0, 0)
                if decision.headers:
                    request[RATE_LIMIT_HEADERS] = decision.headers
                if not decision.allowed:
                    raise decision.error()
                trace.limits = limits
            trace.status = 200
            return web.Response(body=body, content_type="application/json")
        except RelayError as e:
            trace.status, trace.end_reason = e.status, "rejected"
            raise
        finally:
            self._books.record(req, trace)

    def _pick(self, req: RelayRequest, tried: set[Account], ep: Endpoint) -> Account | None:
        if req.pin is None:
            return self._router.pick(req.model, tried, ep, req.sticky)
        if tried:
            return None  # the state it names lives on one account: nowhere to fail over to
        acc, why = self._router.pinned(req.pin)
        if acc is not None:
            return acc
        if why == "resting":
            wait = max(1, math.ceil(self._router.rest_left(req.pin)))
            raise UpstreamUnavailable(
                f"The upstream account that holds this response is resting; retry in {wait}s.",
                code="response_account_unavailable", headers={"Retry-After": str(wait)},
            )
        raise RelayError(
            "The upstream account that holds this response is "
            + ("no longer configured" if why == "gone" else "out of rotation")
            + ", and no other account knows the response: start again with the whole conversation in 'input'.",
            status=409, code="response_account_unavailable",
        )

    async def _attempts(self, request: web.Request, req: RelayRequest, trace: Trace) -> web.StreamResponse:
        ep = ENDPOINTS[req.endpoint]
        deadline = req.started + self._retry.deadline
        tried: set[Account] = set()
        last: UpstreamFailure | None = None
        for attempt in range(self._retry.attempts):
            if attempt and time.monotonic() >= deadline:
                break
            account = self._pick(req, tried, ep)
            while account is not None and account.budget.any:  # the account's own upstream budget
                budgets = self._router.budgets
                d = budgets.try_acquire(account.uid, account.budget, trace.limit_tokens)
                if d is None:  # a shared budget: one round trip
                    d = await budgets.acquire(account.uid, account.budget, trace.limit_tokens)
                if d.allowed:
                    break
                self._router.over_budget(account, d)
                tried.add(account)
                account = self._pick(req, tried, ep)
            if account is None:
                break
            tried.add(account)
            trace.acc = account
            trace.channel, trace.account, trace.attempts = account.channel.name, account.index, attempt + 1
            mode = mode_for(ep, account.channel)
            try:
                adapter = adapter_for(account.channel.type, req.endpoint, mode)
            except LookupError:
                raise InvalidRequest(
                    f"This endpoint is not supported for model '{req.model}'.", code="unsupported_endpoint"
                ) from None
            try:
                return await self._attempt(request, req, trace, adapter, account)
            except UpstreamFailure as f:
                self._router.failed(account, f)
                self._metrics.upstream_error(account.channel.name, f.kind)
                if not f.retryable:
                    # the request itself is at fault: the client gets the upstream's answer as it is
                    trace.status, trace.end_reason = f.status, "upstream_rejected"
                    body = redact(f.body, self._router.keys(), account.key)  # it may quote a key
                    return web.Response(status=f.status, body=body, headers={"Content-Type": f.content_type})
                log.info("attempt %d on %s failed: %s", attempt + 1, account.label, f.reason)
                if f.channel_wide:  # its egress proxy failed: the channel's other accounts go through it too
                    tried.update(a for a in self._router.accounts if a.channel is account.channel)
                last = f
        trace.exhausted = True
        raise self._exhausted(req, last)

    def _exhausted(self, req: RelayRequest, last: UpstreamFailure | None) -> RelayError:
        """429 only for a real rate limit (accounts resting after an upstream 429, budgets spent); accounts that
        failed or are out of rotation give 503 with the seconds until the first is back (or the probe interval)."""
        why, wait = self._router.unavailable(req.model)
        if last is not None and last.kind == "timeout":
            return UpstreamUnavailable("The upstream did not answer in time.", status=504, code="upstream_timeout")
        if (last is None and why == "rate_limited") or (last is not None and last.kind == "rate_limited"):
            wait = wait or (last.retry_after if last is not None else None) or self._retry.cooldown
            return RateLimited(
                f"Every upstream account for model '{req.model}' is rate limited; retry in {wait:.0f}s.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        wait = wait if wait is not None else self._default_wait
        detail = f" (last: {last.reason})" if last is not None else ""
        return UpstreamUnavailable(
            f"Every upstream account for model '{req.model}' is failing or out of rotation{detail}; "
            f"retry in {wait:.0f}s.", headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    async def _attempt(
        self, request: web.Request, req: RelayRequest, trace: Trace, adapter: Adapter, account: Account
    ) -> web.StreamResponse:
        target = self._router.target(account, req.model)
        answer = getattr(adapter, "answer", None)  # answered by the relay itself (a local token count)
        if answer is not None:
            out, trace.usage = answer(req, target)
            trace.status = 200
            return web.Response(body=out, content_type="application/json")
        ureq = with_egress(adapter.build_request(req, target), target)
        resp = await self._upstream.open(ureq, stream=req.stream)
        if resp.status >= 400:
            body = await self._upstream.read_error(resp)
            raise adapter.parse_error(resp.status, resp.headers, body)
        content_type = resp.headers.get("Content-Type", "application/json")
        if content_type.startswith("text/event-stream"):
            return await self._stream(request, req, trace, adapter.stream_handler(req), resp, account)
        if not (content_type.startswith(("application/json", "text/"))):
            return await self._pipe(request, trace, resp, account, content_type)
        try:
            body = await self._upstream.read_body(resp)
        finally:
            resp.close()
        self._router.succeeded(account)
        out_body, usage = adapter.parse_response(req, resp.status, body)
        trace.status, trace.usage = resp.status, usage
        state_id = getattr(adapter, "state_id", None)  # the id of state the upstream keeps (Responses API)
        if state_id is not None and (sid := state_id(req, out_body)):
            self._bindings.bind(sid, account.uid, req.key.id)
        return web.Response(status=resp.status, body=out_body, headers={"Content-Type": content_type})

    def _output_estimate(self, req: RelayRequest) -> int:
        return output_limit(req, self._max_output)

    # -- accounting ---------------------------------------------------------------------------------------

    def record_rejected(
        self, request_id: str, key_id: str, endpoint: str, model: str, status: int, started: float,
        client: str | None = None,
    ) -> None:
        """A request of a known key refused before it was relayed (bad body, unknown model...)."""
        self._books.record_rejected(request_id, key_id, endpoint, model, status, started, client)


def _images(req: RelayRequest) -> int:
    ep = ENDPOINTS.get(req.endpoint)
    if ep is None or not ep.images:
        return 0
    n = (req.json or {}).get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1
