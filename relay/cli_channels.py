"""`relay channels test --config PATH [NAME]`: probe every account of the config's channels (or of one) now,
print a table, exit 0 when every probe passed and 1 otherwise. The probes are the relay's own
(relay.probes); the database is not opened and nothing is recorded."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from .config import Config
from .prober import Prober
from .router import Router
from .upstream import Upstream

__all__ = ["add_channels_parser", "run_channels"]


def add_channels_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> Any:
    """The `channels` command and its `test` action; returns its subparsers (for more actions)."""
    c = sub.add_parser("channels", help="the configured upstream channels: probe their accounts")
    cs = c.add_subparsers(dest="action", required=True, parser_class=parser_class)
    t = cs.add_parser("test", help="probe every account now (a 1-token chat completion each); exit 1 if one fails")
    t.add_argument("--config", required=True, help="path to config.yaml")
    t.add_argument("name", nargs="?", metavar="NAME", help="only this channel")
    return cs


def run_channels(cfg: Config, args: argparse.Namespace) -> int:
    if args.action != "test":
        raise LookupError(args.action)
    names = [ch.name for ch in cfg.channels]
    if args.name is not None and args.name not in names:
        known = ", ".join(names) or "none"
        print(f"relay: no channel named {args.name!r} (channels with keys: {known})", file=sys.stderr)
        return 2
    rows, ok = asyncio.run(_test(cfg, [args.name] if args.name else names))
    _table(("channel", "account", "state", "ok", "status", "latency_ms", "error"), rows, frozenset({1, 4, 5}))
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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]) -> None:
    if not rows:
        print("(no channels)")
        return
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    print(line(header))
    for row in rows:
        print(line(row))
