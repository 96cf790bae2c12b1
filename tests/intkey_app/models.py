"""Models of an app with integer project keys (load through `bootstrap()` only).

Projects live in `project` with an integer primary key `id`; tasks reference them by
`project_id`. The cache plugin app `board` is named in `CACHE_PLUGINS`.

Run with `CACHEWORK_MODELS=tests.intkey_app.models`, `CACHEWORK_PROJECTS=project.id`
(the key type is inferred: int) and `CACHEWORK_CACHED_TABLES=off`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(200))


class Task(Base):
    __tablename__ = "task"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("project.id"), index=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    done: Mapped[bool] = mapped_column(sa.Boolean, default=False)


CACHE_PLUGINS = ["tests.intkey_app.plugin:BoardPlugin"]
