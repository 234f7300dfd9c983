"""`relay channels ...`: the channels group of the command line.

`relay channels list` seeds the store from the config first (as the relay does at start), then lists every
channel the store holds, config.yaml's and those added through the admin API, as the admin API shows them
(relay/channels.py): never a key. `relay channels test [NAME]` probes every account of the config's
channels (or of one) now with the relay's own probes (relay.probes) and prints a table; nothing is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from .channels import ChannelService, seed
from .cli_table import table
from .config import Config
from .prober import Prober
from .router import Router
from .secretbox import SecretBox
from .store_api import Storage
from .upstream import Upstream

__all__ = ["add_parser", "list_channels", "run_test"]


def add_parser(sub: Any) -> Any:
    """The `channels` group with its `list` and `test` actions; returns the group's subparsers."""
    ch = sub.add_parser("channels", help="the channels: config.yaml's and those added through the admin API")
    actions = ch.add_subparsers(dest="action", required=True, parser_class=type(ch))
    ls = actions.add_parser("list", help="list channels (name, type, base_url, models, accounts, source, enabled)")
    ls.add_argument("--config", required=True, help="path to config.yaml")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    t = actions.add_parser("test", help="probe every account now (a 1-token chat completion each); exit 1 if one fails")
    t.add_argument("--config", required=True, help="path to config.yaml")
    t.add_argument("name", nargs="?", metavar="NAME", help="only this channel")
    return actions


async def list_channels(
    store: Storage, cfg: Config, box: SecretBox | None, json: bool,
) -> None:
    await seed(store, cfg)
    service = ChannelService(store, box, cfg.channels)
    views = [service.view(r) for r in await service.list_all()]
    if json:
        for v in views:
            print(orjson.dumps(v).decode())
        return
    rows = []
    for v in views:
        accounts = v["accounts"]
        on = sum(a["enabled"] for a in accounts)
        rows.append([
            v["name"], v["type"], v["base_url"], ",".join(v["models"]), f"{len(accounts)} ({on} enabled)",
            v["source"], "yes" if v["enabled"] else "no",
        ])
    table(["NAME", "TYPE", "BASE_URL", "MODELS", "ACCOUNTS", "SOURCE", "ENABLED"], rows)


def run_test(cfg: Config, args: argparse.Namespace) -> int:
    """`relay channels test`: probe every account of the config's channels (or of NAME) now, as the relay's
    health checks do; print a table; 0 when every probe passed, 1 otherwise. The database is not opened."""
    names = [ch.name for ch in cfg.channels]
    if args.name is not None and args.name not in names:
        known = ", ".join(names) or "none"
        print(f"relay: no channel named {args.name!r} (channels with keys: {known})", file=sys.stderr)
        return 2
    rows, ok = asyncio.run(_test(cfg, [args.name] if args.name else names))
    table(("channel", "account", "state", "ok", "status", "latency_ms", "error"), rows, frozenset({1, 4, 5}), "(no channels)")
    for name in cfg.skipped_channels:
        print(f"(channel {name} skipped: no keys set)")
    return 0 if ok else 1


async def _test(cfg: Config, names: list[str]) -> tuple[list[list[str]], bool]:
    router = Router(cfg.channels, cfg.retry)
    upstream = Upstream(cfg.timeouts)
    await upstream.start()
    try:
        prober = Prober(router, upstream, cfg.health)
        rows: list[list[str]] = []
        ok = True
        for name in names:
            for acc, r in await prober.probe_channel(name):
                ok = ok and r.ok
                rows.append([
                    name, str(acc.index), router.state(acc), "yes" if r.ok else "no",
                    "-" if r.status is None else str(r.status), f"{r.latency_ms:.0f}", r.error or "-",
                ])
        return rows, ok
    finally:
        await upstream.close()
