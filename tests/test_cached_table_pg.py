"""CachedTable against real PostgreSQL: a join as the source, a range index over a timestamp."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from cachework.cache.tables.indexes import NonUnique, PrimaryKey, Range, Spec, Unique
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable
from cachework.records import to_json
from demo.models import Category, Product
from demo.seed import seed

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
events_metadata = sa.MetaData()
events = sa.Table(
    "ct_events",
    events_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("kind", sa.String(20)),
)


def hours(n: int) -> dt.datetime:
    return T0 + dt.timedelta(hours=n)


def test_join_as_source(pg_database):
    engine = pg_database.engine
    with pg_database.session() as session:
        seed(session, projects=2, products=40)
    select = sa.select(
        Product.id,
        Product.sku,
        Product.price,
        Category.code.label("category_code"),
        Category.name.label("category_name"),
    ).join(Category, Product.category_id == Category.id, isouter=True)
    table = CachedTable(
        [PrimaryKey("id"), Unique("sku"), NonUnique("category_code")],
        SelectSource(engine, select),
        name="products_with_category",
    )
    first = table.get(1)
    assert isinstance(first["price"], Decimal)
    assert to_json(first)["price"] == str(first["price"])
    tools = table.get_records("category_code", "tools")
    assert tools and all(r["category_name"] == "Tools" for r in tools)
    assert table.stats()["records"] == 40

    with engine.begin() as conn:
        conn.execute(sa.update(Category).where(Category.code == "tools").values(name="Hardware"))
    assert table.get(tools[0]["id"])["category_name"] == "Tools"  # not told yet
    # Every product of the category changed: name them through the non-unique index.
    table.invalidate_records([Spec.of("category_code", "tools")])
    fetches = table.source.fetches
    refreshed = table.get_records("category_code", "tools")
    assert sorted(r["id"] for r in refreshed) == sorted(r["id"] for r in tools)
    assert {r["category_name"] for r in refreshed} == {"Hardware"}
    assert table.source.fetches == fetches + 1  # one query for the whole category
    assert table.get(tools[0]["id"])["category_name"] == "Hardware"


@pytest.fixture
def events_engine(pg_database):
    engine = pg_database.engine
    events_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            events.insert(), [{"id": i, "at": hours(i), "kind": f"k{i % 4}"} for i in range(100)]
        )
    yield engine
    events_metadata.drop_all(engine)


def make_events_table(engine) -> CachedTable:
    return CachedTable(
        [PrimaryKey("id"), Range("at"), NonUnique("kind")],
        SelectSource(engine, sa.select(events)),
        name="events",
        autoload=Spec.range("at", hours(10), hours(30)),
    )


def ids(records) -> list[int]:
    return [r["id"] for r in records]


def test_timestamp_range_index_covers_loads_and_expires(events_engine):
    table = make_events_table(events_engine)
    assert ids(table.get_records("at", ge=hours(12), lt=hours(15))) == [12, 13, 14]
    fetches = table.source.fetches
    assert ids(table.get_records("at", ge=hours(10), lt=hours(30))) == list(range(10, 30))
    assert table.source.fetches == fetches  # covered
    assert ids(table.get_records("at", ge=hours(25), lt=hours(35))) == list(range(25, 35))
    assert table.source.fetches == fetches + 1  # partly outside: from PostgreSQL

    assert table.adjust("at", ge=hours(20), lt=hours(40)) == {"expired": 10, "loaded": 10}
    fetches = table.source.fetches
    assert ids(table.get_records("at", ge=hours(20), lt=hours(40))) == list(range(20, 40))
    assert table.source.fetches == fetches
    assert table.stats()["records"] == 20
    assert table.get(5)["id"] == 5  # expired: read from PostgreSQL
    assert table.source.fetches == fetches + 1


def test_moved_timestamp_is_refreshed_in_both_places(events_engine):
    table = make_events_table(events_engine)
    table.get(15)
    with events_engine.begin() as conn:
        conn.execute(events.update().where(events.c.id == 15).values(at=hours(28)))
    table.invalidate_records(
        [Spec.of("id", 15), Spec.range("at", hours(15), hours(16))],
        [Spec.of("id", 15), Spec.range("at", hours(28), hours(29))],
    )
    assert table.stats()["dirty"] == ["kind"]  # not named: reads through it refresh
    assert 15 not in ids(table.get_records("at", ge=hours(14), lt=hours(17)))
    assert ids(table.get_records("at", ge=hours(27), lt=hours(29))) == [27, 15, 28]  # by time
    assert table.get(15)["at"] == hours(28)
    assert len(table.get_records("kind", "k3")) == 25  # not covered: from PostgreSQL
