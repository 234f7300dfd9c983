"""Which store a config's `database` names: a postgresql:// (or postgres://) URL is PostgreSQL, anything
else a SQLite file (or ":memory:"). Everything above this module sees only the Storage Protocol.
"""

from __future__ import annotations

import sqlite3

from .store import Store
from .store_api import Storage, StoreError, is_postgres, mask_url
from .store_pg import DATABASE_ERRORS as _PG_ERRORS
from .store_pg import PgStore

__all__ = ["DATABASE_ERRORS", "Storage", "StoreError", "is_postgres", "make_store", "mask_url"]

# What a store may raise when its database fails (not a bad row, not a bad argument).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, StoreError, *_PG_ERRORS)


def make_store(database: str) -> Storage:
    """The store for `database`, not yet opened."""
    if is_postgres(database):
        return PgStore(database)
    return Store(database)
