"""The MetaData that holds cachework's own tables (cache items, invalidation log, outbox).

Each module that defines a table puts it on `metadata`; `TABLE_MODULES` lists them so
`own_metadata()` can import them all before `create_all`.
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa

metadata = sa.MetaData()

TABLE_MODULES: list[str] = [
    "cache.store",
    "cache.locks",
    "cache.invalidation.tables",
]


def own_metadata() -> sa.MetaData:
    """`metadata` with every table module imported, so all our tables are on it."""
    for name in TABLE_MODULES:
        importlib.import_module(name)
    return metadata
