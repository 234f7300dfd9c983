"""The `relay` command: serve (more subcommands arrive with the key store)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .config import ConfigError, load_config

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one clear line, status 2
        self.exit(2, f"{self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="relay", description="High-concurrency OpenAI-compatible LLM API relay.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("serve", help="run the relay")
    s.add_argument("--config", required=True, help="path to config.yaml")
    s.add_argument("--host", help="listen address (default: server.host)")
    s.add_argument("--port", type=int, help="listen port (default: server.port)")
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
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
    except ConfigError as e:
        print(f"relay: config error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
