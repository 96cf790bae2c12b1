"""The demo's cached tables (named by `CACHEWORK_CACHED_TABLES`, the default).

`CACHED_TABLES` maps a table name to a factory taking the process's Engine; the registry
calls it lazily in each worker child. Categories are cached whole, by id and by code.
"""

from __future__ import annotations

import sqlalchemy as sa

from cachework.cache.tables.full_table import FullTableCache
from demo.models import Category


def categories(engine: sa.Engine) -> FullTableCache:
    return FullTableCache(engine, Category, key_column="code", name="categories")


CACHED_TABLES = {"categories": categories}
