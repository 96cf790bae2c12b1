"""The team's cached table (CACHEWORK_CACHED_TABLES=shop.cached_tables)."""

import sqlalchemy as sa

from cachework.api import FullTableCache
from shop.models import Category


def categories(engine: sa.Engine) -> FullTableCache:
    return FullTableCache(engine, Category, key_column="code", name="shop_category")


CACHED_TABLES = {"shop_category": categories}
