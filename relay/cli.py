"""The `relay` command: serve | keys create|list|revoke|topup | usage | db migrate|copy | channels list|test.

The key and usage commands open the configured database directly (a SQLite file or PostgreSQL), so they
work whether or not the relay is running (WAL and a busy timeout let them share a SQLite file); a running
relay picks up their changes within its key cache's poll interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import orjson

from . import cli_channels
from .cli_table import table
from .config import Config, ConfigError, load_config
from .dbcopy import NotARelayDatabase, check_source, copy_sqlite
from .errors import RelayError
from .keys import LIMITS, KeyConflict, create_key, day_start, key_fields, resolve_key, revoke_key, top_up
from .secretbox import SecretError, box_from_env
from .storage import DATABASE_ERRORS, Storage, is_postgres, make_store, mask_url
from .store_pg import PgStore
from .types import KeyRecord

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one clear line, status 2
        self.exit(2, f"{self.prog}: {message}\n")


class UserError(Exception):
    """A bad argument found after parsing (an unknown key, an unlimited key to top up): one line, status 2."""


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of USD: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or more, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r}")
    return items


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="relay", description="High-concurrency OpenAI-compatible LLM API relay.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("serve", help="run the relay")
    s.add_argument("--config", required=True, help="path to config.yaml")
    s.add_argument("--host", help="listen address (default: server.host)")
    s.add_argument("--port", type=int, help="listen port (default: server.port)")
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")

    k = sub.add_parser("keys", help="create, list, revoke and top up client keys")
    ks = k.add_subparsers(dest="action", required=True, parser_class=_Parser)
    c = ks.add_parser("create", help="create a key; prints it on the last line (shown only this once)")
    c.add_argument("--config", required=True, help="path to config.yaml")
    c.add_argument("--name", required=True, help="a label for the key")
    c.add_argument("--quota", type=_usd, metavar="USD", help="USD the key may spend (default: unlimited)")
    for limit, what in (("rpm", "requests per minute"), ("rpd", "requests per day"), ("tpm", "tokens per minute"),
                        ("tpd", "tokens per day"), ("ipm", "images per minute")):
        c.add_argument(f"--{limit}", type=_positive_int, metavar="N", help=f"{what} (default: no limit)")
    c.add_argument("--models", type=_csv, metavar="M1,M2", help="models or globs the key may use (default: all)")
    c.add_argument("--expires", metavar="ISO8601", help="expiry, e.g. 2030-01-31 or 2030-01-31T12:00:00Z (UTC)")
    c.add_argument("--group", help="billing group (default: default)")
    c.add_argument("--ip", type=_csv, metavar="CIDR,...", help="addresses the key may be used from (default: any)")
    ls = ks.add_parser("list", help="list keys (never their secrets)")
    ls.add_argument("--config", required=True, help="path to config.yaml")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    r = ks.add_parser("revoke", help="revoke a key")
    r.add_argument("--config", required=True, help="path to config.yaml")
    r.add_argument("key", metavar="KEY", help="the key's id or displayed prefix")
    t = ks.add_parser("topup", help="add USD to a key's balance")
    t.add_argument("--config", required=True, help="path to config.yaml")
    t.add_argument("key", metavar="KEY", help="the key's id or displayed prefix")
    t.add_argument("--usd", type=_usd, required=True, metavar="AMOUNT", help="USD to add")

    u = sub.add_parser("usage", help="usage summary from the ledger, by key, model and day")
    u.add_argument("--config", required=True, help="path to config.yaml")
    u.add_argument("--key", metavar="KEY", help="only this key (id or displayed prefix)")
    u.add_argument("--since", metavar="DATE", help="from this day on (YYYY-MM-DD, UTC)")
    u.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    d = sub.add_parser("db", help="the database's schema, and moving an embedded database to PostgreSQL")
    ds = d.add_subparsers(dest="action", required=True, parser_class=_Parser)
    m = ds.add_parser("migrate", help="create or upgrade the schema (the relay also does this at start)")
    m.add_argument("--config", required=True, help="path to config.yaml")
    cp = ds.add_parser("copy", help="copy a SQLite deployment (keys, balances, ledger) into the config's PostgreSQL")
    cp.add_argument("--from", dest="source", required=True, metavar="SQLITE_FILE", help="the relay.db to copy")
    cp.add_argument("--config", required=True, help="path to config.yaml (its database: a postgresql:// URL)")

    cli_channels.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.command == "serve":
            if args.workers < 1:
                raise ConfigError("--workers: must be at least 1")
            if args.port is not None and not 0 <= args.port <= 65535:
                raise ConfigError("--port: must be between 0 and 65535")
            from .app import build_app, configure_logging, run

            configure_logging(cfg.log_level)
            build_app(cfg)  # validates what config alone cannot (channel types) before binding anything
            return run(cfg, args.host, args.port, args.workers)
        if args.command == "channels" and args.action == "test":
            return cli_channels.run_test(cfg, args)
        return _run_db_command(cfg, args)
    except ConfigError as e:
        print(f"relay: config error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 2
    except DATABASE_ERRORS as e:
        print(f"relay: database error ({mask_url(cfg.database)}): {_first_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `relay keys list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# -- key and usage commands ---------------------------------------------------------------------------------


def _run_db_command(cfg: Config, args: argparse.Namespace) -> int:
    command: Callable[[Storage, argparse.Namespace], Awaitable[None]]
    if args.command == "usage":
        command = _usage
    elif args.command == "db":
        command = {"migrate": _migrate, "copy": _copy}[args.action]
    elif args.command == "channels":
        try:
            box = box_from_env()
        except SecretError as e:
            raise ConfigError(str(e)) from None

        async def command(store: Storage, args: argparse.Namespace) -> None:
            await cli_channels.list_channels(store, cfg, box, args.json)
    else:
        command = {"create": _create, "list": _list, "revoke": _revoke, "topup": _topup}[args.action]

    if args.command == "db" and args.action == "copy" and not is_postgres(cfg.database):
        raise UserError(
            f"db copy: the config's database is not PostgreSQL ({cfg.database}): set database: postgresql://... "
            "to the database to copy into"
        )
    if args.command == "db" and args.action == "copy":
        try:
            check_source(args.source)
        except NotARelayDatabase as e:
            raise UserError(f"db copy: {e}") from None
    _check_database(cfg.database)

    async def run() -> None:
        store = make_store(cfg.database)
        try:
            await store.open()
            await command(store, args)
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except RelayError as e:  # a field check shared with the admin API
        name = _FLAGS.get(e.param or "", e.param)
        message = e.message.replace(f"'{e.param}' ", "", 1) if e.param else e.message
        raise UserError(f"--{name}: {message}" if name else message) from None
    return 0


def _check_database(path: str) -> None:
    """Open the file once before the store does, so a path that cannot be a database is one clear line.

    A PostgreSQL URL is checked for its shape only; an unreachable server is the store's error (status 1).
    """
    if is_postgres(path):
        try:
            parts = urlsplit(path)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as e:
            raise UserError(f"config error: database: not a valid PostgreSQL URL ({mask_url(path)}): {e}") from None
        if not parts.hostname and "host=" not in parts.query:
            raise UserError(f"config error: database: {mask_url(path)} names no host")
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
            db.execute("PRAGMA schema_version")
    except sqlite3.Error as e:
        raise UserError(f"config error: database: cannot open {path}: {e}") from None


# The admin API's field names -> this command's flags, for error lines.
_FLAGS = {"quota_usd": "quota", "expires_at": "expires", "ip_allow": "ip", "usd": "usd", "since": "since", "id": ""}


async def _migrate(store: Storage, args: argparse.Namespace) -> None:
    if store.applied:
        print(f"schema at version {store.schema_version} (applied {', '.join(map(str, store.applied))})")
    else:
        print(f"schema already at version {store.schema_version}")


async def _copy(store: Storage, args: argparse.Namespace) -> None:
    assert isinstance(store, PgStore)
    try:
        counts = await copy_sqlite(args.source, store)
    except NotARelayDatabase as e:
        raise UserError(f"db copy: {e}") from None
    print(counts)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


async def _create(store: Storage, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name}
    if args.quota is not None:
        body["quota_usd"] = args.quota
    for limit in LIMITS:
        if getattr(args, limit) is not None:
            body[limit] = getattr(args, limit)
    if args.models:
        body["models"] = args.models
    if args.expires is not None:
        body["expires_at"] = args.expires
    if args.group is not None:
        body["group"] = args.group
    if args.ip:
        body["ip_allow"] = args.ip
    record, secret = await create_key(store, key_fields(body, creating=True))
    print(f"id:      {record.id}")
    print(f"prefix:  {record.prefix}")
    print(f"name:    {record.name}")
    print(f"balance: {_money(record.granted_usd)}")
    print(f"limits:  {_limits(record)}")
    print(f"expires: {_when(record.expires_at)}")
    print("The key below is shown only this once; store it now:")
    print(secret)


async def _list(store: Storage, args: argparse.Namespace) -> None:
    keys = await store.list_keys()
    if args.json:
        for k in keys:
            print(orjson.dumps(_public(k)).decode())
        return
    rows = [
        [k.id, k.prefix, k.name, _status(k), _money(k.granted_usd), _money(k.spent_usd),
         _money(None if k.granted_usd is None else k.granted_usd - k.spent_usd), _limits(k), _when(k.expires_at)]
        for k in keys
    ]
    table(["ID", "PREFIX", "NAME", "STATUS", "GRANTED", "SPENT", "REMAINING", "LIMITS", "EXPIRES"], rows, right=frozenset({4, 5, 6}))


async def _revoke(store: Storage, args: argparse.Namespace) -> None:
    record, already = await revoke_key(store, args.key)
    print(f"{record.id} ({record.prefix}, {record.name}) {'was already revoked' if already else 'revoked'}")


async def _topup(store: Storage, args: argparse.Namespace) -> None:
    try:
        updated = await top_up(store, args.key, args.usd)
    except KeyConflict:
        record = await resolve_key(store, args.key)
        raise UserError(f"{record.id} ({record.prefix}) has an unlimited balance: there is nothing to top up") from None
    assert updated.granted_usd is not None
    remaining = updated.granted_usd - updated.spent_usd
    print(f"{updated.id} ({updated.prefix}): granted {_money(updated.granted_usd)}, "
          f"spent {_money(updated.spent_usd)}, remaining {_money(remaining)}")


async def _usage(store: Storage, args: argparse.Namespace) -> None:
    key_id = (await resolve_key(store, args.key)).id if args.key else None
    since = day_start("since", args.since) if args.since is not None else None
    rows = await store.usage_summary(key_id, since, ("key", "model", "day"))
    if args.json:
        for r in rows:
            print(orjson.dumps(r).decode())
        return
    names = {k.id: k.name for k in await store.list_keys()}
    lines = [
        [r["key"], names.get(r["key"], "?"), r["model"], r["day"], str(r["requests"]), str(r["ok"]),
         str(r["prompt_tokens"]), str(r["completion_tokens"]), f"${r['cost_usd']:.6f}"]
        for r in rows
    ]
    if rows:
        lines.append([
            "total", "", "", "", str(sum(r["requests"] for r in rows)), str(sum(r["ok"] for r in rows)),
            str(sum(r["prompt_tokens"] for r in rows)), str(sum(r["completion_tokens"] for r in rows)),
            f"${sum(r['cost_usd'] for r in rows):.6f}",
        ])
    table(["KEY", "NAME", "MODEL", "DAY", "REQUESTS", "OK", "PROMPT TOKENS", "COMPLETION TOKENS", "COST"], lines,
           right=frozenset({4, 5, 6, 7, 8}))


# -- formatting ---------------------------------------------------------------------------------------------


def _public(k: KeyRecord) -> dict[str, Any]:
    out: dict[str, Any] = k.public()
    out["remaining_usd"] = None if k.granted_usd is None else round(k.granted_usd - k.spent_usd, 9)
    return out


def _money(usd: float | None) -> str:
    return "unlimited" if usd is None else f"${usd:.4f}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(k: KeyRecord) -> str:
    if k.status == "active" and k.expires_at is not None and k.expires_at <= time.time():
        return "expired"
    return str(k.status)


def _limits(k: KeyRecord) -> str:
    parts = [f"{name}={getattr(k, name)}" for name in ("rpm", "rpd", "tpm", "tpd", "ipm") if getattr(k, name) is not None]
    if k.models:
        parts.append("models=" + ",".join(k.models))
    if k.ip_allow:
        parts.append("ip=" + ",".join(k.ip_allow))
    if k.group != "default":
        parts.append(f"group={k.group}")
    return " ".join(parts) or "-"


if __name__ == "__main__":
    sys.exit(main())
