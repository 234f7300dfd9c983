"""Prometheus metrics: one registry per app, small observe helpers, bounded labels only.

Labels are drawn from the configuration (model names, channel names) and small fixed sets (status class,
failure kind). A model the relay does not serve is counted as `other`, so a client cannot grow the label set.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LE = (*(repr(float(b)) for b in _LATENCY_BUCKETS), "+Inf")  # as Prometheus clients write `le`: 1.0, 2.5


class _Hist:
    """One histogram's figures: observations per bucket (not cumulative) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last: past every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, value)] += 1  # le: the first bound >= value
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for le, n in zip(_LE, self.counts):
            total += n
            out.append((le, total))
        return out


class _ModelFigures:
    __slots__ = ("completion", "latency", "prompt", "ttft")

    def __init__(self) -> None:
        self.latency, self.ttft = _Hist(), _Hist()
        self.prompt = self.completion = 0


class _RequestsCollector(Collector):
    """relay_requests_total, relay_request_duration_seconds, relay_time_to_first_token_seconds and
    relay_tokens_total from plain numbers the request path adds to: a request costs a few additions, not a
    lock and a bucket walk per series (prometheus_client's own types), and the families are built when
    scraped."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (model, channel, status class) -> requests
        self.models: dict[str, _ModelFigures] = {}

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "relay_requests", "Client requests by model, channel and status class", labels=["model", "channel", "status"],
        )
        for labels, n in self.requests.items():
            requests.add_metric(labels, n)
        yield requests
        latency = HistogramMetricFamily(
            "relay_request_duration_seconds", "Time from request to the end of the response", labels=["model"],
        )
        ttft = HistogramMetricFamily(
            "relay_time_to_first_token_seconds", "Time from request to the first byte of a stream", labels=["model"],
        )
        tokens = CounterMetricFamily("relay_tokens", "Tokens by model and kind", labels=["model", "kind"])
        for model, f in self.models.items():
            latency.add_metric([model], f.latency.buckets(), f.latency.sum)
            ttft.add_metric([model], f.ttft.buckets(), f.ttft.sum)
            tokens.add_metric([model, "prompt"], f.prompt)
            tokens.add_metric([model, "completion"], f.completion)
        yield latency
        yield ttft
        yield tokens


class _RotationCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "relay_accounts_out_of_rotation", "Upstream accounts not taking requests now",
            labels=["channel", "state"],
        )
        counts: dict[tuple[str, str], int] = {}
        for channel, state in self._source():
            counts[(channel, state)] = counts.get((channel, state), 0) + 1
        for (channel, state), n in counts.items():
            g.add_metric([channel, state], n)
        yield g


class _SharedStateCollector(Collector):
    """Whether the shared store (Redis) answers, and how many of its calls failed: read when scraped."""

    def __init__(self, source: Callable[[], tuple[bool, int]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        up, errors = self._source()
        yield GaugeMetricFamily(
            "relay_shared_state_up", "1 while Redis answers for shared account health and budgets", value=int(up)
        )
        yield CounterMetricFamily(
            "relay_shared_state_errors", "Calls to Redis for account health and budgets that failed", value=errors
        )


class _RateLimiterCollector(Collector):
    """Whether Redis answers for the keys' rate limits (limits.backend: redis), and the requests decided
    without it."""

    def __init__(self, source: Callable[[], tuple[bool, int]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        up, errors = self._source()
        yield GaugeMetricFamily("relay_rate_limiter_up", "1 while Redis answers for the keys' rate limits", value=int(up))
        yield CounterMetricFamily(
            "relay_rate_limiter_errors", "Requests whose rate limits were decided without Redis (failed, timed out, "
            "or left alone while it is down)", value=errors,
        )
class _StatesCollector(Collector):
    """Accounts per channel and state (active | resting | out), read when scraped."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("relay_accounts", "Upstream accounts by state", labels=["channel", "state"])
        counts: dict[tuple[str, str], int] = {}
        for channel, state in self._source():
            counts[(channel, state)] = counts.get((channel, state), 0) + 1
        for (channel, state), n in counts.items():
            g.add_metric([channel, state], n)
        yield g


class _CountsCollector(Collector):
    def __init__(self, name: str, doc: str, label: str, source: Callable[[], Mapping[str, int]]) -> None:
        self._name, self._doc, self._label, self._source = name, doc, label, source

    def collect(self) -> Iterable[CounterMetricFamily]:
        c = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, n in self._source().items():
            c.add_metric([value], n)
        yield c


class _StickyCollector(Collector):
    def __init__(self, source: Callable[[], tuple[int, int]]) -> None:
        self._source = source

    def collect(self) -> Iterable[CounterMetricFamily]:
        hits, misses = self._source()
        c = CounterMetricFamily(
            "relay_sticky_routing", "Requests with a prompt-cache key (or user id): kept on their account (hit) "
            "or bound to one (miss)", labels=["result"],
        )
        c.add_metric(["hit"], hits)
        c.add_metric(["miss"], misses)
        yield c


class _RestartsCollector(Collector):
    def __init__(self, source: Callable[[], int]) -> None:
        self._source = source

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "relay_worker_restarts", "Workers the supervisor restarted after they died", value=self._source(),
        )


class Metrics:
    def __init__(
        self, models: Iterable[str], out_of_rotation: Callable[[], Iterable[tuple[str, str]]],
        shared_state: Callable[[], tuple[bool, int]] | None = None,
    ) -> None:
        self.models = frozenset(models)
        r = self.registry = CollectorRegistry()
        self._figures = _RequestsCollector()
        r.register(self._figures)
        self.active_streams = Gauge("relay_active_streams", "Streams being relayed now", registry=r)
        self._upstream_errors = Counter(
            "relay_upstream_errors", "Failed upstream attempts by channel and reason",
            ["channel", "reason"], registry=r,
        )
        self.ledger_pending = Gauge("relay_ledger_pending_rows", "Usage rows waiting to be written", registry=r)
        self.ledger_flush = Histogram(
            "relay_ledger_flush_seconds", "Time to write one batch of usage rows", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
        )
        self.ledger_rows = Counter("relay_ledger_rows_written", "Usage rows written", registry=r)
        self.ledger_rejected = Counter("relay_ledger_rows_rejected", "Usage rows the store refused", registry=r)
        self.store_up = Gauge(
            "relay_store_up", "1 while the store (SQLite or PostgreSQL) takes the ledger's and balance keeper's calls",
            registry=r,
        )
        self.store_up.set(1)
        self._store_errors = Counter(
            "relay_store_errors", "Failed store calls by the ledger and the balance keeper", ["caller"], registry=r,
        )
        self._auth_failures = Counter(
            "relay_auth_failures", "Requests refused for their credential, by reason (missing_api_key, "
            "invalid_api_key, key_revoked, key_expired, ip_not_allowed, admin)", ["reason"], registry=r,
        )
        r.register(_RotationCollector(out_of_rotation))
        if shared_state is not None:  # limits.backend: redis
            r.register(_SharedStateCollector(shared_state))

    def observe_request(
        self, model: str, channel: str | None, status: int, seconds: float, ttft: float | None,
        prompt_tokens: int, completion_tokens: int,
    ) -> None:
        if model not in self.models:
            model = "other"
        f = self._figures
        labels = (model, channel or "none", f"{status // 100}xx")
        f.requests[labels] = f.requests.get(labels, 0) + 1
        m = f.models.get(model)
        if m is None:
            m = f.models[model] = _ModelFigures()
        m.latency.observe(seconds)
        if ttft is not None:
            m.ttft.observe(ttft)
        m.prompt += prompt_tokens
        m.completion += completion_tokens

    def rate_limiter(self, source: Callable[[], tuple[bool, int]]) -> None:
        self.registry.register(_RateLimiterCollector(source))
    def account_health(
        self, states: Callable[[], Iterable[tuple[str, str]]], webhook: Callable[[], Mapping[str, int]] | None,
    ) -> None:
        """relay_accounts{channel,state}, relay_account_transitions_total, relay_health_webhook_total."""
        self._transitions = Counter(
            "relay_account_transitions", "Accounts taken out of rotation or brought back",
            ["channel", "from_state", "to_state", "reason"], registry=self.registry,
        )
        self.registry.register(_StatesCollector(states))
        if webhook is not None:
            self.registry.register(_CountsCollector(
                "relay_health_webhook", "Account transitions POSTed to health.webhook_url, by result", "result",
                webhook,
            ))

    def transition(self, channel: str, from_state: str, to_state: str, reason: str) -> None:
        self._transitions.labels(channel, from_state, to_state, reason).inc()

    def sticky_routing(self, source: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_StickyCollector(source))

    def auth_failure(self, reason: str) -> None:
        self._auth_failures.labels(reason).inc()

    def store_error(self, caller: str) -> None:
        self._store_errors.labels(caller).inc()

    def upstream_error(self, channel: str, reason: str) -> None:
        self._upstream_errors.labels(channel, reason).inc()

    def worker_restarts(self, source: Callable[[], int]) -> None:
        """Expose relay_worker_restarts_total, read from `source` at each scrape (the supervisor's count)."""
        self.registry.register(_RestartsCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
