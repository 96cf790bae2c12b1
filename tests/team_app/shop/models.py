"""The team's models (CACHEWORK_MODELS=shop.models)."""

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "shop_project"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(100))


class Category(Base):
    __tablename__ = "shop_category"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100))
