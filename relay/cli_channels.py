"""`relay channels ...`: the channels group of the command line (`list` here).

`relay channels list` seeds the store from the config first (as the relay does at start), then lists every
channel the store holds, config.yaml's and those added through the admin API, as the admin API shows them
(relay/channels.py): never a key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from .channels import ChannelService, seed
from .config import Config
from .secretbox import SecretBox
from .store_api import Storage

__all__ = ["add_parser", "list_channels"]


def add_parser(sub: Any) -> Any:
    """The `channels` group with its `list` action; returns the group's subparsers, where more actions
    (`relay channels test`) join it."""
    ch = sub.add_parser("channels", help="the channels: config.yaml's and those added through the admin API")
    actions = ch.add_subparsers(dest="action", required=True, parser_class=type(ch))
    ls = actions.add_parser("list", help="list channels (name, type, base_url, models, accounts, source, enabled)")
    ls.add_argument("--config", required=True, help="path to config.yaml")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    return actions


async def list_channels(
    store: Storage, cfg: Config, box: SecretBox | None, json: bool,
    table: Callable[[Sequence[str], Sequence[Sequence[str]]], None],
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
