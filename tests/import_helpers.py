"""Shared pieces of the version-import tests: the extra models, a scripted history, and a
normalised view of version tables that can be compared across databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.utils import option

from cachework import database as db
from cachework.importers.bootstrap import bootstrap
from cachework.worker.schema import create_tables

MODELS = bootstrap(("demo.models", "tests.versions_models"))
BY_NAME = MODELS.by_name()
Product, Category, Project = BY_NAME["Product"], BY_NAME["Category"], BY_NAME["Project"]
OrderLine, LedgerEntry, Order = BY_NAME["OrderLine"], BY_NAME["LedgerEntry"], BY_NAME["Order"]
PROJECT = "00000000-0000-0000-0000-000000000001"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5)


def create_all(database: db.Database) -> None:
    create_tables(database.engine, MODELS)


@contextmanager
def reference_database(tmp_path: Path) -> Iterator[db.Database]:
    """A separate SQLite database where the same changes go through Continuum's ORM path."""
    database = db.Database(f"sqlite:///{tmp_path / 'orm-reference.db'}")
    create_all(database)
    try:
        yield database
    finally:
        database.dispose()


def _product(i: int, **extra) -> dict:
    values = {
        "id": i,
        "sku": f"SKU-{i}",
        "name": f"Product {i}",
        "price": Decimal(f"{i}.50"),
        "category_id": 1 + i % 3,
        "project_uuid": PROJECT,
        "active": True,
    }
    return {**values, **extra}


# Each step is one unit of change: one ORM commit on one side, plain SQL + one import on
# the other. ("insert", cls, values) / ("update", cls, key, changes) / ("delete", cls, key).
STEPS: list[list[tuple]] = [
    [
        *(("insert", Category, {"id": i, "code": f"c{i}", "name": f"Cat {i}"}) for i in (1, 2, 3)),
        *(("insert", Product, _product(i)) for i in range(1, 7)),
        ("insert", OrderLine, {"order_no": 1, "line_no": 1, "sku": "A", "qty": Decimal("1.500"),
                               "shipped": False, "due_at": T0, "note": None, "scratch": "x"}),
        ("insert", OrderLine, {"order_no": 1, "line_no": 2, "sku": "B", "qty": None,
                               "shipped": None, "due_at": None, "note": "n", "scratch": None}),
        ("insert", OrderLine, {"order_no": 2, "line_no": 1, "sku": "A", "qty": Decimal("2"),
                               "shipped": True, "due_at": T0, "note": None, "scratch": None}),
        *(("insert", LedgerEntry, {"id": i, "order_no": 1, "amount": Decimal(i), "memo": None})
          for i in (1, 2, 3)),
    ],
    [
        ("update", Product, (1,), {"price": Decimal("99.99")}),
        ("update", Product, (2,), {"category_id": None}),
        ("delete", Product, (3,)),
        ("update", Category, (2,), {"name": "Renamed"}),
        ("update", OrderLine, (1, 1), {"qty": None, "shipped": True}),
        ("update", OrderLine, (1, 2), {"due_at": T0 + dt.timedelta(days=1, microseconds=7)}),
        ("delete", OrderLine, (2, 1)),
        ("update", LedgerEntry, (1,), {"amount": Decimal("10.25"), "memo": "fixed"}),
        ("delete", LedgerEntry, (2,)),
    ],
    [
        ("insert", Product, _product(3, name="Product 3 again")),
        ("update", Product, (1,), {"active": False}),
        ("update", Product, (4,), {"price": Decimal("4.50")}),  # same value: no change
        ("insert", OrderLine, {"order_no": 2, "line_no": 1, "sku": "A2", "qty": Decimal("2"),
                               "shipped": True, "due_at": T0, "note": None, "scratch": None}),
        ("insert", LedgerEntry, {"id": 2, "order_no": None, "amount": Decimal("2"),
                                 "memo": "again"}),
        ("update", OrderLine, (1, 2), {"scratch": "excluded"}),  # not versioned: no change
        ("update", LedgerEntry, (3,), {"memo": None}),  # NULL -> NULL: no change
    ],
]  # fmt: skip


def seed_fixed(session: Session) -> None:
    """Rows of the unversioned tables the versioned ones refer to."""
    session.execute(sa.insert(Project), [{"uuid": PROJECT, "title": "P"}])
    session.execute(
        sa.insert(Order),
        [{"order_no": 1, "customer": "Ann"}, {"order_no": 2, "customer": "Bob"}],
    )


def _where(cls: type, key: tuple) -> sa.ColumnElement[bool]:
    pk = cls.__table__.primary_key.columns
    return sa.and_(*(col == value for col, value in zip(pk, key, strict=True)))


def apply_sql(session: Session, step: list[tuple]) -> None:
    """The step as plain Core SQL on the live tables: Continuum records nothing."""
    for op, cls, *args in step:
        if op == "insert":
            session.execute(sa.insert(cls.__table__).values(**args[0]))
        elif op == "update":
            session.execute(sa.update(cls.__table__).where(_where(cls, args[0])).values(**args[1]))
        else:
            session.execute(sa.delete(cls.__table__).where(_where(cls, args[0])))


def apply_orm(session: Session, step: list[tuple]) -> None:
    """The same step through the ORM, so Continuum's own flush writes the versions."""
    for op, cls, *args in step:
        if op == "insert":
            session.add(cls(**args[0]))
            session.flush()
        elif op == "update":
            obj = session.get(cls, args[0])
            for name, value in args[1].items():
                setattr(obj, name, value)
        else:
            session.delete(session.get(cls, args[0]))
            session.flush()


def history(session: Session, cls: type) -> dict[tuple, list[tuple]]:
    """Every key's versions in order: (operation, versioned values, validity), where
    validity is "open", "next" (closed by the key's next version, as Continuum does) or
    the raw end id when it is anything else; "-" under the subquery strategy."""
    vcls = version_class(cls)
    table = vcls.__table__
    keys = [c.name for c in cls.__table__.primary_key.columns]
    tx, end, op = (
        option(cls, "transaction_column_name"),
        option(cls, "end_transaction_column_name"),
        option(cls, "operation_type_column_name"),
    )
    values = [c.name for c in table.c if c.name not in (*keys, tx, end, op)]
    rows = session.execute(sa.select(table).order_by(*(table.c[k] for k in keys), table.c[tx]))
    out: dict[tuple, list[tuple]] = {}
    raw: dict[tuple, list] = {}
    for row in rows.mappings():
        raw.setdefault(tuple(row[k] for k in keys), []).append(row)
    for key, versions in raw.items():
        items = []
        for i, row in enumerate(versions):
            if end not in table.c:
                validity = "-"
            elif row[end] is None:
                validity = "open"
            elif i + 1 < len(versions) and row[end] == versions[i + 1][tx]:
                validity = "next"
            else:
                validity = f"end={row[end]}"
            items.append((row[op], tuple(row[v] for v in values), validity))
        out[key] = items
    return out


def api_history(session: Session, cls: type) -> dict[tuple, list[tuple]]:
    """Every key's versions read through Continuum's own API: `version_class`, the live
    object's `versions`, and each version's `previous`, `next` and `changeset` (which
    Continuum computes from the validity columns or, under the subquery strategy, from
    transaction ids). Returns (operation, changeset) per version, oldest first."""
    vcls = version_class(cls)
    keys = [c.key for c in sa.inspect(cls).primary_key]
    found: dict[tuple, list] = {}
    ordering = [*(getattr(vcls, k) for k in keys), vcls.transaction_id]
    for version in session.scalars(sa.select(vcls).order_by(*ordering)):
        found.setdefault(tuple(getattr(version, k) for k in keys), []).append(version)
    out: dict[tuple, list[tuple]] = {}
    for key, versions in found.items():
        ids = [v.transaction_id for v in versions]
        assert [v.previous and v.previous.transaction_id for v in versions] == [None, *ids[:-1]]
        assert [v.next and v.next.transaction_id for v in versions] == [*ids[1:], None]
        live = session.get(cls, key[0] if len(key) == 1 else key)
        if live is not None:
            assert [v.transaction_id for v in live.versions] == ids, key
        out[key] = [(v.operation_type, v.changeset) for v in versions]
    return out


def transactions(session: Session) -> int:
    return session.execute(sa.text('SELECT count(*) FROM "transaction"')).scalar_one()


VERSIONED = (Category, Product, OrderLine, LedgerEntry)
