"""build_app(config) -> web.Application, its lifecycle, and the server loop (uvloop, signals, workers)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import (
    channels,
    config_check,
    tokens,
    web_admin,
    web_admin_channels,
    web_admin_health,
    web_api,
    web_billing,
    web_gemini,
    web_input,
    web_ops,
)
from .access_log import LOG_FORMAT, AccessLog, LineFormatter
from .adapters import adapter_for
from .auth import KeyCache, config_key_record
from .availability import AvailabilityRecorder
from .balances import Balances
from .billing import Pricing
from .bindings import ResponseBindings
from .bindings_redis import RedisBindings
from .channel_watch import ChannelWatch
from .client_addr import ClientAddress
from .config import Config, ConfigError
from .health import Outage
from .health_redis import RedisState, SharedBudgets
from .health_service import HealthService
from .http_server import RelayRunner
from .journal import make_journal
from .ledger import Ledger
from .limits import LocalLimiter
from .limits_redis import RedisLimiter
from .metrics import Metrics
from .middleware import errors_middleware, response_headers
from .proxy import Proxy
from .router import Router
from .secretbox import SecretError, box_from_env
from .status_data import StatusBoard
from .storage import Storage, make_store
from .upstream import Upstream
from .workers import CONFIG_ERROR, RestartCounter, supervise

__all__ = ["AVAILABILITY", "HEALTH", "LEDGER", "PROXY", "ROUTER", "STORE", "build_app", "run", "start"]

log = logging.getLogger("relay")

ROUTER = web.AppKey("router", Router)
STORE = web.AppKey("store", Storage)
LEDGER = web.AppKey("ledger", Ledger)
PROXY = web.AppKey("proxy", Proxy)
METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", HealthService)
AVAILABILITY = web.AppKey("availability", AvailabilityRecorder)  # health probes report to it too

def build_app(cfg: Config, workers: int = 1, holder: str | None = None) -> web.Application:
    """`holder` names this process's balance leases in the store (see relay.balances); stable across
    restarts of the same process (host, port, worker slot), so a restarted process takes its own back."""
    for i, ch in enumerate(cfg.channels):
        try:
            adapter_for(ch.type)
        except LookupError as e:
            raise ConfigError(f"channels[{i}].type: {e}") from None

    try:
        box = box_from_env()  # seals the secrets of channels added through the admin API
    except SecretError as e:
        raise ConfigError(str(e)) from None
    router = Router(cfg.channels, cfg.retry, sticky_ttl=cfg.routing.sticky_ttl)
    shared = _share(cfg, router)
    outage = None if shared is None else shared[0].outage
    metrics = Metrics(
        router.models(), lambda: [(a.channel.name, s) for a, s in router.out_of_rotation()],
        None if outage is None else (lambda: (outage.up, outage.errors)),
    )
    store = make_store(cfg.database)
    upstream = Upstream(cfg.timeouts)
    holder = holder or f"{socket.gethostname()}:pid{os.getpid()}:{os.urandom(4).hex()}"
    balances = Balances(
        store, holder, cfg.billing.lease_ttl, cfg.billing.lease_fraction,
        on_store_error=lambda: metrics.store_error("balances"),
    )
    ledger = Ledger(store, cfg.ledger, metrics, holder, balances.written, make_journal(cfg.ledger, cfg.database, holder))
    keys = KeyCache(store)
    limiter = _limiter(cfg, workers)
    if isinstance(limiter, RedisLimiter):
        redis_limiter = limiter
        metrics.rate_limiter(lambda: (redis_limiter.up, redis_limiter.errors))
    redis_bindings = (
        RedisBindings(cfg.limits.redis_url, cfg.limits.prefix + "resp:") if cfg.limits.backend == "redis" else None
    )
    bindings = ResponseBindings(redis_bindings or store, cfg.routing.response_ttl)
    availability = AvailabilityRecorder(store, cfg.status.bucket)
    proxy = Proxy(
        cfg, router, upstream, ledger, metrics, Pricing(cfg.prices, cfg.billing, cfg.reasoning), balances, limiter,
        bindings, availability,
    )
    metrics.sticky_routing(lambda: (router.sticky.hits, router.sticky.misses))

    def reloaded() -> None:  # the channels changed: the metrics' model labels follow
        metrics.models = frozenset(router.models())

    watch = ChannelWatch(store, router, box, cfg.channels, on_reload=reloaded)
    health = HealthService(cfg, router, upstream, metrics, holder)
    health.prober.on_result = availability.observe_probe  # probes count in the status page's figures
    ops = web_ops.OpsDeps(
        metrics, router, store, lambda: ledger.store_ok and balances.store_ok,
        StatusBoard(store, router, cfg.status, overloaded=lambda: ledger.full), cfg.metrics_token,
    )

    budget = web_input.BodyBudget(cfg.server.max_inflight_body_bytes)
    access = AccessLog(cfg.access_log)
    middleware = errors_middleware(ClientAddress(cfg.server.trusted_proxies), metrics, access, budget)
    app = web.Application(
        middlewares=[middleware],
        client_max_size=cfg.server.max_body_bytes,
        handler_args={"max_field_size": 16384},
    )
    app[ROUTER], app[STORE], app[LEDGER], app[PROXY], app[METRICS] = router, store, ledger, proxy, metrics
    app[web_input.BODY_BUDGET] = budget
    app[HEALTH] = health
    app[AVAILABILITY] = availability
    api = web_api.ApiDeps(cfg, keys, router, proxy, ledger, bindings)
    web_api.add_routes(app, api, web_gemini.google_models(api))
    web_gemini.add_gemini_routes(app, api)
    web_ops.add_routes(app, ops)
    web_billing.add_routes(app, web_billing.BillingDeps(keys, store))
    app.on_response_prepare.append(response_headers(cfg.server.cors_origins))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if isinstance(limiter, RedisLimiter):
            await limiter.start()  # an unreachable Redis stops the start with one clear line
        if shared is not None:
            await shared[1].start()  # budgets
            await shared[0].start()  # health: what other processes found, read before this one serves
        await store.open()
        config_keys = [config_key_record(k) for k in cfg.client_keys]
        for record in config_keys:
            await store.sync_config_key(record)
        await store.retire_config_keys(r.id for r in config_keys)
        await ledger.recover()  # rows a killed process left in its journal, before any lease is taken
        await keys.refresh()
        keys.start()
        for name in await channels.seed(store, cfg):
            log.info("channel %s is no longer in the config: removed", name)
        await watch.refresh()  # the channels added through the admin API too, before serving
        watch.start()
        await upstream.start()
        await health.start()
        ledger.start()
        availability.start()
        balances.start()
        bindings.start()
        yield
        await health.close()  # first: its last transitions still reach the shared state
        await keys.close()
        await watch.close()
        await ledger.close()
        await availability.close()
        await bindings.close()
        if redis_bindings is not None:
            await redis_bindings.close()
        await balances.close()  # after the ledger's last write: a lease goes back only once its charges are in
        if shared is not None:
            await shared[0].close()
            await shared[1].close()
        if isinstance(limiter, RedisLimiter):
            await limiter.close()
        await upstream.close()
        await store.close()
        access.flush()  # the last requests' lines

    async def drain(app: web.Application) -> None:
        ops.draining = True
        await proxy.drain(cfg.server.shutdown_grace)

    app.cleanup_ctx.append(lifecycle)
    # after the relay's own lifecycle: the admin API's connection opens once the schema exists
    admin = web_admin.AdminDeps(cfg, store, keys, balances)
    web_admin.add_routes(app, admin)
    web_admin_channels.add_routes(
        app, cfg.admin_token, channels.ChannelService(admin.store, box, cfg.channels), watch,
    )
    web_admin_health.add_routes(app, cfg, health.prober)
    app.on_shutdown.append(drain)
    return app


def _limiter(cfg: Config, workers: int) -> LocalLimiter | RedisLimiter:
    if cfg.limits.backend == "redis":
        lm = cfg.limits
        return RedisLimiter(lm.redis_url, fail_open=lm.fail_open, timeout=lm.timeout, prefix=lm.prefix + "rl:")
    if workers > 1:
        log.warning(
            "limits.backend is local with %d workers: each worker enforces 1/%d of every key's limits "
            "(set limits.backend: redis for exact shared limits)", workers, workers,
        )
    return LocalLimiter(share=workers)


def _share(cfg: Config, router: Router) -> tuple[RedisState, SharedBudgets] | None:
    """With limits.backend: redis, account health and budgets shared by every process (else the router's own)."""
    lm = cfg.limits
    if lm.backend != "redis":
        return None
    outage = Outage()
    budgets = SharedBudgets(RedisLimiter(lm.redis_url, timeout=lm.timeout, prefix=lm.prefix + "budget:"), outage)
    # the background reads wait longer than a request would: a slow answer there delays nobody
    state = RedisState(
        router, lm.redis_url, retry=cfg.retry, outage=outage, prefix=lm.prefix + "acct:",
        interval=lm.sync_interval, timeout=max(lm.timeout, 0.5),
    )
    router.shared, router.budgets = state, budgets
    return state, budgets


# -- serving ------------------------------------------------------------------------------------------------


async def start(
    cfg: Config, host: str | None = None, port: int | None = None, *, reuse_port: bool = False, workers: int = 1,
    slot: int = 0,
) -> tuple[web.AppRunner, str]:
    """Start serving; returns the runner (await runner.cleanup() to stop) and the base URL."""
    port = cfg.server.port if port is None else port
    # A port of 0 is a new port each time: no stable name, so a fresh one (its old leases simply expire).
    holder = f"{socket.gethostname()}:{port}:{slot}" if port else None
    app = build_app(cfg, workers, holder)
    # handler_cancellation: a client that goes away cancels its handler, which closes the upstream at once
    # keepalive_timeout also runs from the moment a connection opens: a client that has not sent a whole
    # request (headers included) by then is disconnected, so slow senders cannot hold connections.
    runner = RelayRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0,
        keepalive_timeout=cfg.server.read_timeout,
    )
    await runner.setup()
    site = web.TCPSite(
        runner, host or cfg.server.host, port,
        reuse_port=reuse_port or None, backlog=4096,
    )
    await site.start()
    server = site._server  # noqa: SLF001 - the bound port when port 0 was asked for
    sockets = server.sockets if server is not None else []  # type: ignore[attr-defined]
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host or cfg.server.host}:{bound}"


async def _serve(
    cfg: Config, host: str, port: int, workers: int, slot: int = 0, restarts: Callable[[], int] | None = None,
) -> None:
    # The tokenizer (for usage the upstream did not report) takes ~0.5 s to load and holds the GIL while
    # it does: load it before serving, not on the first request that needs it. (A worker finds it loaded
    # by the parent: this is then a cache hit.)
    tokens.preload()
    runner, url = await start(cfg, host, port, reuse_port=workers > 1, workers=workers, slot=slot)
    if restarts is not None:
        runner.app[METRICS].worker_restarts(restarts)
    models = ", ".join(runner.app[ROUTER].models()) or "none"
    log.info("relay listening on %s (pid %d; models: %s)", url, os.getpid(), models)
    if slot == 0 and (restarts is None or restarts() == 0):
        # once the start can no longer fail (a config error is then its one line), by one worker, once
        for line in config_check.warnings(cfg, host):
            log.warning("%s", line)
    gc.freeze()  # what startup built lives for the whole run: keep it out of every collection
    # Requests in flight hold thousands of tracked objects (about 10,000 at 50 in flight), nearly all freed
    # by reference counting: at the default threshold (700) a young collection ran every few dozen
    # requests and found nothing, about 5 % of the CPU under load. Cyclic garbage still gets collected.
    gc.set_threshold(_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new connections; finishing in-flight requests")
    await runner.cleanup()
    log.info("stopped")


_YOUNG_THRESHOLD = 25_000


def _run_loop(coro: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]


def run(cfg: Config, host: str | None = None, port: int | None = None, workers: int = 1) -> int:
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    for name in cfg.skipped_channels:
        log.info("channel %s has no keys set: skipped", name)
    tokenizer_s = _load_tokenizer()
    _check_port(host, port, reuse_port=workers > 1)
    if workers <= 1:
        _run_loop(_serve(cfg, host, port, 1))
        return 0
    return _run_workers(cfg, host, port, workers, tokenizer_s)


def _load_tokenizer() -> float:
    """Load and check the tokenizer once, in this process, before anything serves or forks; its seconds.

    A damaged or missing tokenizer raises TokenizerError (a ConfigError): the start stops with its one line
    (nothing said before it) instead of billing on estimates. Workers forked later share what was loaded.
    """
    loaded = time.monotonic()
    tokens.preload()
    return time.monotonic() - loaded


def _check_port(host: str, port: int, reuse_port: bool) -> None:
    """Fail fast, with one line, when the port is taken: before any worker starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"server.port: cannot listen on {host}:{port} ({e.strerror})") from None


def _run_workers(cfg: Config, host: str, port: int, workers: int, tokenizer_s: float = 0.0) -> int:
    """N processes on one port (SO_REUSEPORT) under a supervisor that restarts them (relay/workers.py).

    What is read-only and costly is loaded once, before the first fork: the tokenizer (about 75 MB for both
    encodings, loaded by run()) and, here, the modules a worker would import. gc.freeze() then moves every
    object the parent holds out of the collector's reach, so no collection in a worker writes to those pages
    and they stay shared copy-on-write: an extra worker costs its own heap, not another copy of all that.
    """
    gc.collect()  # the garbage of startup, freed before the freeze: its holes are refilled by what follows
    gc.disable()  # and no collection between here and the forks leaves new holes in shared pages
    tokens.preload()  # loaded by run(): a cache hit
    _import_uvloop()
    log.info("tokenizer loaded in %.2f s (pid %d), shared by %d workers", tokenizer_s, os.getpid(), workers)
    restarts = RestartCounter()
    gc.freeze()
    gc.enable()  # collections skip the frozen objects, in the parent and in every worker

    def work(slot: int) -> int:
        try:
            _run_loop(_serve(cfg, host, port, workers, slot, restarts.value))
        except ConfigError as e:  # e.g. an unreachable Redis at start: the command's one line, status 2
            print(f"relay: config error: {e}", file=sys.stderr)
            return CONFIG_ERROR
        except BaseException:  # noqa: BLE001 - the supervisor restarts it
            log.exception("worker %d failed", slot)
            return 1
        return 0

    # each worker drains within shutdown_grace; past that (and runner.cleanup's own 5 s) something is stuck
    return supervise(workers, work, restarts, stop_timeout=cfg.server.shutdown_grace + 15.0)


def _import_uvloop() -> None:
    try:
        import uvloop  # noqa: F401 - imported once in the parent, shared by the workers
    except ImportError:  # pragma: no cover
        pass


# Libraries whose debug output carries SQL (key hashes in it) or raw protocol detail: at WARNING whatever
# log_level says.
_QUIET_LOGGERS = ("aiosqlite", "asyncpg", "aiohttp.access", "aiohttp.internal", "aiohttp.client", "redis")


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)  # its timestamp formatted once a second (the access log's lines)
    handler.setFormatter(LineFormatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    root = logging.getLogger()
    root.setLevel(level.upper())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
