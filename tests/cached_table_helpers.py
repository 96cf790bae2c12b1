"""Shared pieces of the cached-table tests: an `items` table and a source that can pause."""

from __future__ import annotations

import datetime as dt
import threading

import sqlalchemy as sa

from cachework.cache.tables.indexes import NonUnique, PrimaryKey, Range, Unique
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable

metadata = sa.MetaData()
items = sa.Table(
    "ct_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("code", sa.String(20), unique=True),
    sa.Column("grp", sa.Integer, index=True),
    sa.Column("score", sa.Integer, index=True),
    sa.Column("name", sa.String(50)),
)
BASE_TIME = dt.datetime(2026, 1, 1)
INDEXES = (PrimaryKey("id"), Unique("code"), NonUnique("grp"), Range("score"))


def row(i: int, version: int = 0) -> dict:
    return {"id": i, "code": f"c{i}", "grp": i % 3, "score": i * 10, "name": f"n{i}.{version}"}


def make_engine(url: str, n: int = 20) -> sa.Engine:
    """A fresh `ct_items` table with rows 1..n."""
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    if n:
        with engine.begin() as conn:
            conn.execute(items.insert(), [row(i) for i in range(1, n + 1)])
    return engine


class GatedSource(SelectSource):
    """A SelectSource whose next fetches can be held mid-read (after the query ran)."""

    def __init__(self, engine: sa.Engine, select) -> None:
        super().__init__(engine, select)
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def _run(self, query):
        records = super()._run(query)
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(10), "test never released the gated fetch"
        return records


def make_table(engine: sa.Engine, gated: bool = False, **kwargs) -> CachedTable:
    source_cls = GatedSource if gated else SelectSource
    return CachedTable(INDEXES, source_cls(engine, sa.select(items)), name="items", **kwargs)


def write(engine: sa.Engine, i: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(items.update().where(items.c.id == i).values(**values))
