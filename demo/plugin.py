"""The demo's cache plugin, app `inventory`: per project a `summary` and `by_category`.

Each item is one aggregate query, computed for one scope at a time; the framework writes
the items, holds the lock and reports errors.
"""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework.api import reads
from demo.models import Category, Product


def _money(value: Decimal | None) -> str:
    """Prices are exact decimals; JSON keeps them as a string with two places."""
    return f"{(value or Decimal(0)).quantize(Decimal('0.01'))}"


class InventoryPlugin:
    """`summary` = {"products", "active", "total_value"} (total over active products, as a
    decimal string) and `by_category` = {category code: product count} (products without
    a category are not counted there). With no project it writes nothing: the demo has
    no site-wide items."""

    app_name = "inventory"
    item_names = ("summary", "by_category")
    # What each item reads: a change to a product rebuilds its project's items; a
    # renamed category code (the whole table) rebuilds every project's `by_category`.
    depends_on = {
        "summary": [reads("products", project="project_uuid")],
        "by_category": [reads("products", project="project_uuid"), reads("categories")],
    }

    def update_cache(
        self, store, session: Session, project: str | None = None, name: str | None = None
    ) -> None:
        if project is None:
            return
        if name in (None, "summary"):
            store.set_item("summary", summary(session, project))
        if name in (None, "by_category"):
            store.set_item("by_category", by_category(session, project))


def summary(session: Session, project: str) -> dict:
    row = session.execute(
        sa.select(
            sa.func.count(Product.id),
            sa.func.count(Product.id).filter(Product.active.is_(True)),
            sa.func.sum(Product.price).filter(Product.active.is_(True)),
        ).where(Product.project_uuid == project)
    ).one()
    return {"products": row[0], "active": row[1], "total_value": _money(row[2])}


def by_category(session: Session, project: str) -> dict:
    rows = session.execute(
        sa.select(Category.code, sa.func.count(Product.id))
        .join(Product, Product.category_id == Category.id)
        .where(Product.project_uuid == project)
        .group_by(Category.code)
        .order_by(Category.code)
    )
    return {code: count for code, count in rows}
