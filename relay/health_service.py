"""Account health wired together for one relay process: the prober, the transition log's listeners
(metrics, the webhook) and, with limits.backend: redis, the probe leader lock."""

from __future__ import annotations

from .config import Config
from .health import Transition
from .health_redis import ProbeLeader
from .health_webhook import Webhook
from .metrics import Metrics
from .prober import MAX_TICK, Prober
from .router import Router
from .upstream import Upstream

__all__ = ["HealthService"]


class HealthService:
    def __init__(self, cfg: Config, router: Router, upstream: Upstream, metrics: Metrics, holder: str) -> None:
        h = cfg.health
        self.enabled = h.enabled
        router.error_keywords = tuple(k.encode() for k in h.error_keywords)
        self.webhook = Webhook(upstream, h.webhook_url) if h.webhook_url else None
        metrics.account_health(router.states, None if self.webhook is None else (lambda: self.webhook.counts))  # type: ignore[union-attr]

        def count(t: Transition) -> None:
            metrics.transition(t.channel, t.from_state, t.to_state, t.cause)

        router.on_transition.append(count)
        if self.webhook is not None:
            router.on_transition.append(self.webhook.put)
        self.leader: ProbeLeader | None = None
        if cfg.limits.backend == "redis" and h.enabled:
            # renewed at every tick of the scheduler (at most 1 s apart): 3 ticks without one and it lapses
            self.leader = ProbeLeader(
                cfg.limits.redis_url, cfg.limits.prefix + "probe-leader", holder, ttl=3 * MAX_TICK,
                timeout=max(cfg.limits.timeout, 0.5),
            )
        self.prober = Prober(router, upstream, h, leader=self.leader)
        self._closed = False

    async def start(self) -> None:
        """After the upstream session is open."""
        if self.webhook is not None:
            self.webhook.start()
        if self.enabled:
            self.prober.start()

    async def close(self) -> None:
        """Before the upstream session closes (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        await self.prober.close()
        if self.leader is not None:
            await self.leader.close()
        if self.webhook is not None:
            await self.webhook.close()
