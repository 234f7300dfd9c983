"""The SQLite schema as an ordered list of migrations; version i is MIGRATIONS[i - 1] (statements run in
order), recorded in the file's PRAGMA user_version. The versions mean the same as PostgreSQL's
(relay/store_pg_schema.py). Applied by Store.open, inside one BEGIN IMMEDIATE.
"""

from __future__ import annotations

__all__ = ["COST_COLUMN", "MIGRATIONS"]

# Version 1: the schema as it stood when versions began (IF NOT EXISTS: a file from then already has it).
_V1 = (
    """CREATE TABLE IF NOT EXISTS usage (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT    NOT NULL UNIQUE,
    ts                REAL    NOT NULL,
    key_id            TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    endpoint          TEXT    NOT NULL,
    channel           TEXT,
    account           INTEGER,
    status            INTEGER NOT NULL,
    end_reason        TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    usage_source      TEXT    NOT NULL,
    latency_ms        REAL    NOT NULL,
    ttft_ms           REAL,
    stream            INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    cost_usd          REAL    NOT NULL DEFAULT 0 CHECK (cost_usd >= 0)
)""",
    "CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts)",
    "CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_id, ts)",
    """CREATE TABLE IF NOT EXISTS keys (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    key_hash    TEXT    NOT NULL UNIQUE,
    prefix      TEXT    NOT NULL,
    models      TEXT    NOT NULL DEFAULT '[]',
    status      TEXT    NOT NULL DEFAULT 'active',
    expires_at  REAL,
    granted_usd REAL,
    spent_usd   REAL    NOT NULL DEFAULT 0,
    rpm INTEGER, rpd INTEGER, tpm INTEGER, tpd INTEGER, ipm INTEGER,
    ip_allow    TEXT    NOT NULL DEFAULT '[]',
    grp         TEXT    NOT NULL DEFAULT 'default',
    created_at  REAL    NOT NULL,
    rev         INTEGER NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS keys_rev ON keys (rev)",
)

# Version 2: a ledger written before billing has no cost_usd (its rows cost 0); Store adds it only if missing.
COST_COLUMN = "ALTER TABLE usage ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0 CHECK (cost_usd >= 0)"

# Version 3: balance leases, money of a key set aside for one process (see Store.lease).
_V3 = (
    """CREATE TABLE IF NOT EXISTS leases (
    key_id     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    amount_usd REAL NOT NULL CHECK (amount_usd >= 0),
    expires_at REAL NOT NULL,
    PRIMARY KEY (key_id, holder)
)""",
    "CREATE INDEX IF NOT EXISTS leases_holder ON leases (holder)",
)

# Version 4: which upstream account made a response (ids of OpenAI's Responses API exist only there); no content.
_V4 = (
    """CREATE TABLE IF NOT EXISTS response_bindings (
    response_id TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    expires_at  REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS response_bindings_expiry ON response_bindings (expires_at)",
)

# Version 5: availability history, counts of outcomes per model and per channel in time buckets (the
# /status page); no content. Several processes add to the same row (relay/store_buckets.py).
_V5 = (
    """CREATE TABLE IF NOT EXISTS availability_buckets (
    scope          TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    start          INTEGER NOT NULL,
    ok             INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    latency_ms_sum REAL    NOT NULL DEFAULT 0,
    latency_n      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, name, start)
)""",
    "CREATE INDEX IF NOT EXISTS availability_buckets_start ON availability_buckets (start)",
)

# Version 6: channels managed at run time (relay/store_channels.py); settings and secrets as JSON text,
# the secrets sealed with RELAY_SECRET. A deleted channel stays as a tombstone with a rev for the pollers.
_V6 = (
    """CREATE TABLE IF NOT EXISTS channels (
    name         TEXT    PRIMARY KEY,
    source       TEXT    NOT NULL,
    settings     TEXT    NOT NULL,
    sealed       TEXT    NOT NULL DEFAULT '{}',
    accounts     TEXT    NOT NULL DEFAULT '[]',
    accounts_off TEXT    NOT NULL DEFAULT '[]',
    enabled      INTEGER NOT NULL DEFAULT 1,
    deleted      INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    rev          INTEGER NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS channels_rev ON channels (rev)",
)

# Version 7: prompt tokens read from and written to the provider's prompt cache (each priced apart).
_V7 = (
    "ALTER TABLE usage ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0)",
    "ALTER TABLE usage ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0)",
)

# Version 8: the client's address of each request (behind trusted proxies, the one they forward).
_V8 = ("ALTER TABLE usage ADD COLUMN client TEXT",)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, (COST_COLUMN,), _V3, _V4, _V5, _V6, _V7, _V8)
