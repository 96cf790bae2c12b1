"""Extra versioned models for the version-import tests (load through `bootstrap()` only).

- `OrderLine`: composite primary key; nullable, numeric, boolean and datetime columns;
  `scratch` is excluded from versioning (Continuum leaves it out of the version table).
- `LedgerEntry`: versioned with Continuum's *subquery* strategy (per-model option), so its
  version table has no `end_transaction_id`; it references OrderLine's order, so it comes
  after it in dependency order.

They share the demo's `Base` (and so its MetaData): loading them adds their tables to
what `create_tables()` creates in this process.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

# The demo's declarative base: Continuum resolves its `Transaction` class in the registry of
# the first versioned models, and the test run maps these classes after the demo's.
from demo.models import Base


class Order(Base):
    __tablename__ = "orders"

    order_no: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    customer: Mapped[str] = mapped_column(sa.String(100))


class OrderLine(Base):
    __tablename__ = "order_lines"
    __versioned__: dict = {"exclude": ["scratch"]}

    order_no: Mapped[int] = mapped_column(
        sa.ForeignKey("orders.order_no"), primary_key=True, autoincrement=False
    )
    line_no: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    sku: Mapped[str] = mapped_column(sa.String(50))
    qty: Mapped[Decimal | None] = mapped_column(sa.Numeric(12, 3), nullable=True)
    shipped: Mapped[bool | None] = mapped_column(sa.Boolean, nullable=True)
    due_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime, nullable=True)
    note: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    scratch: Mapped[str | None] = mapped_column(sa.String(50), nullable=True)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __versioned__: dict = {"strategy": "subquery"}

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    order_no: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.order_no"), nullable=True)
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    memo: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
