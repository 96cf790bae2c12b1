"""The example app's tables (README, "Two commands": what `make demo` runs on them).

Categories and products are versioned by SQLAlchemy-Continuum. Import this module only
through `cachework.importers.bootstrap.bootstrap()`, which turns versioning on first.
"""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(200))


class Category(Base):
    __tablename__ = "categories"
    __versioned__: dict = {}

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(50), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))


class Product(Base):
    __tablename__ = "products"
    __versioned__: dict = {}

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    sku: Mapped[str] = mapped_column(sa.String(50), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    price: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    category_id: Mapped[int | None] = mapped_column(sa.ForeignKey("categories.id"), index=True)
    project_uuid: Mapped[str] = mapped_column(sa.ForeignKey("projects.uuid"), index=True)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)


CACHE_PLUGINS = ["demo.plugin:InventoryPlugin"]  # found by cachework.cache.items.plugins.discover()
