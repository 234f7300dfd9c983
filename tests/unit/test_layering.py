"""The layout's rules: lower modules never import higher ones; I/O libraries stay in their one module."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "relay"

# Each module may import only modules listed before it (adapters count as one layer).
ORDER = [
    "types", "tasks", "quiet_log", "access_log", "redact", "client_addr", "config_yaml", "egress", "config_health",
    "config_reasoning", "admin_schema", "config_channels", "config", "config_check", "errors", "endpoints", "secretbox", "admin_openapi",
    "sse", "tokenizer", "tokens", "tokens_messages", "usage", "billing", "balances", "limits", "limits_redis", "health", "adapters",
    "probes", "metrics",
    "store_api", "store_spend", "store_schema", "store_buckets", "store_channels", "store_keys", "store", "store_pg_schema",
    "store_pg_buckets", "store_pg_channels", "store_pg_keys", "store_pg", "storage", "auth", "keys", "sticky", "router", "channels",
    "channel_watch", "health_redis", "bindings", "bindings_redis", "deadlines", "http1_response", "http1", "upstream", "prober", "health_webhook",
    "health_service", "journal", "ledger", "availability", "books", "proxy_stream", "proxy", "web_api", "web_gemini", "web_billing",
    "status_page", "status_data", "web_ops", "web_admin_guard", "web_admin", "web_admin_channels", "web_admin_health",
    "workers", "middleware", "http_server", "app", "dbcopy", "cli_table", "cli_channels", "cli",
]
ONLY_IN = {
    "aiosqlite": {"store"}, "asyncpg": {"store_pg"}, "tiktoken": {"tokenizer"}, "prometheus_client": {"metrics"}, "redis": {"limits_redis", "health_redis", "bindings_redis"},
    "httptools": {"http1_response"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = (node.module or "").split(".")[0]
                out.add(base or (node.names[0].name if node.level == 1 else ""))
            else:
                out.add("ext:" + (node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            out.update("ext:" + a.name.split(".")[0] for a in node.names)
    return out


def layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return "adapters" if rel.parts[0] == "adapters" else rel.stem


def modules() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if p.stem not in ("__init__", "__main__") or p.parent.name == "adapters"]


def test_no_module_imports_a_higher_one() -> None:
    for path in modules():
        me = layer(path)
        if me not in ORDER:
            continue
        for dep in imports(path):
            if dep.startswith("ext:") or dep not in ORDER or dep == me:
                continue
            assert ORDER.index(dep) < ORDER.index(me), f"{path.name} imports {dep}"


def test_io_libraries_stay_in_their_module() -> None:
    for path in modules():
        deps = imports(path)
        for lib, allowed in ONLY_IN.items():
            if "ext:" + lib in deps:
                assert layer(path) in allowed, f"{path} imports {lib}"
        if layer(path) == "adapters":
            assert "ext:aiohttp" not in deps, f"{path} imports aiohttp"
        if "aiohttp" in path.read_text() and "ClientSession" in path.read_text():
            assert layer(path) == "upstream", f"{path} uses the aiohttp client"
