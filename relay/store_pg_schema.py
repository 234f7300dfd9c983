"""The PostgreSQL schema as an ordered list of migrations; version i is MIGRATIONS[i - 1].

The versions mean the same as the SQLite store's (relay/store.py MIGRATIONS), so a database of either kind
at version N holds the same tables. Floats are double precision (costs compare to the cent, sums of whole
dollars are exact); times are unix seconds, as in SQLite. Applied by PgStore.open under an advisory lock.
"""

from __future__ import annotations

__all__ = ["CHANNEL_REV_LOCK", "MIGRATIONS", "REV_LOCK", "SCHEMA_LOCK"]

# pg_advisory_xact_lock keys (per database): one for migrations, one serializing key-table rev bumps.
SCHEMA_LOCK = 0x72656C6179_0001  # "relay" 1
REV_LOCK = 0x72656C6179_0002
CHANNEL_REV_LOCK = 0x72656C6179_0011  # the channels table's rev bumps (relay/store_pg_channels.py)

_V1 = """
CREATE TABLE IF NOT EXISTS usage (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id        text             NOT NULL UNIQUE,
    ts                double precision NOT NULL,
    key_id            text             NOT NULL,
    model             text             NOT NULL,
    endpoint          text             NOT NULL,
    channel           text,
    account           integer,
    status            integer          NOT NULL,
    end_reason        text             NOT NULL,
    prompt_tokens     bigint           NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens bigint           NOT NULL CHECK (completion_tokens >= 0),
    usage_source      text             NOT NULL,
    latency_ms        double precision NOT NULL,
    ttft_ms           double precision,
    stream            boolean          NOT NULL,
    attempts          integer          NOT NULL,
    cost_usd          double precision NOT NULL DEFAULT 0 CHECK (cost_usd >= 0 AND cost_usd < 'Infinity')
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_id, ts);
CREATE TABLE IF NOT EXISTS keys (
    id          text             PRIMARY KEY,
    name        text             NOT NULL,
    key_hash    text             NOT NULL UNIQUE,
    prefix      text             NOT NULL,
    models      text             NOT NULL DEFAULT '[]',
    status      text             NOT NULL DEFAULT 'active',
    expires_at  double precision,
    granted_usd double precision,
    spent_usd   double precision NOT NULL DEFAULT 0,
    rpm bigint, rpd bigint, tpm bigint, tpd bigint, ipm bigint,
    ip_allow    text             NOT NULL DEFAULT '[]',
    grp         text             NOT NULL DEFAULT 'default',
    created_at  double precision NOT NULL,
    rev         bigint           NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_rev ON keys (rev);
CREATE INDEX IF NOT EXISTS keys_prefix ON keys (prefix);
"""

# SQLite's version 2 adds cost_usd to a ledger from before billing; a PostgreSQL ledger always had it.
_V2 = "ALTER TABLE usage ADD COLUMN IF NOT EXISTS cost_usd double precision NOT NULL DEFAULT 0"

# Balance leases: money of a key set aside for one process (see PgStore.lease); times by the server's clock.
_V3 = """
CREATE TABLE IF NOT EXISTS leases (
    key_id     text             NOT NULL,
    holder     text             NOT NULL,
    amount_usd double precision NOT NULL CHECK (amount_usd >= 0),
    expires_at double precision NOT NULL,
    PRIMARY KEY (key_id, holder)
);
CREATE INDEX IF NOT EXISTS leases_holder ON leases (holder);
"""

# Which upstream account made a response (ids of OpenAI's Responses API exist only there); no content.
_V4 = """
CREATE TABLE IF NOT EXISTS response_bindings (
    response_id text             PRIMARY KEY,
    account     text             NOT NULL,
    key_id      text             NOT NULL,
    expires_at  double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS response_bindings_expiry ON response_bindings (expires_at);
"""

# Availability history: counts of outcomes per model and per channel in time buckets (the /status page);
# no content. Several processes add to the same row (relay/store_pg_buckets.py).
_V5 = """
CREATE TABLE IF NOT EXISTS availability_buckets (
    scope          text             NOT NULL,
    name           text             NOT NULL,
    start          bigint           NOT NULL,
    ok             bigint           NOT NULL DEFAULT 0,
    failed         bigint           NOT NULL DEFAULT 0,
    latency_ms_sum double precision NOT NULL DEFAULT 0,
    latency_n      bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, name, start)
);
CREATE INDEX IF NOT EXISTS availability_buckets_start ON availability_buckets (start);
"""

# Channels managed at run time (relay/store_pg_channels.py); a deleted one stays as a tombstone with a rev.
_V6 = """
CREATE TABLE IF NOT EXISTS channels (
    name         text             PRIMARY KEY,
    source       text             NOT NULL,
    settings     text             NOT NULL,
    sealed       text             NOT NULL DEFAULT '{}',
    accounts     text             NOT NULL DEFAULT '[]',
    accounts_off text             NOT NULL DEFAULT '[]',
    enabled      boolean          NOT NULL DEFAULT true,
    deleted      boolean          NOT NULL DEFAULT false,
    created_at   double precision NOT NULL,
    updated_at   double precision NOT NULL,
    rev          bigint           NOT NULL
);
CREATE INDEX IF NOT EXISTS channels_rev ON channels (rev);
"""

# Prompt tokens read from and written to the provider's prompt cache (each priced apart).
_V7 = """
ALTER TABLE usage ADD COLUMN IF NOT EXISTS cache_read_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0);
ALTER TABLE usage ADD COLUMN IF NOT EXISTS cache_write_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0);
"""

# The client's address of each request (behind trusted proxies, the one they forward).
_V8 = "ALTER TABLE usage ADD COLUMN IF NOT EXISTS client text"

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8)
