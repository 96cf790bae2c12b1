"""Models shaped like SODAR's (load through `cachework.importers.bootstrap.bootstrap()` only).

SODAR keeps its projects (and categories, `type` CATEGORY) in `projectroles_project`, with
an integer primary key `id` and a public `sodar_uuid` (a native uuid on PostgreSQL, 32 hex
characters on SQLite: SQLAlchemy's `sa.Uuid`). Apps reference projects by that uuid. The
cache plugin app `samplesheets` is named in `CACHE_PLUGINS`, the way cachework discovers it.

Run with `CACHEWORK_MODELS=tests.sodar_app.models`,
`CACHEWORK_PROJECTS=projectroles_project.sodar_uuid` (the key type is inferred: uuid) and
`CACHEWORK_CACHED_TABLES=off`.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projectroles_project"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sodar_uuid: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(sa.String(255))
    type: Mapped[str] = mapped_column(sa.String(64), default="PROJECT")
    parent_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("projectroles_project.id"), nullable=True
    )


class Investigation(Base):
    __tablename__ = "samplesheets_investigation"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sodar_uuid: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid.uuid4)
    project_uuid: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("projectroles_project.sodar_uuid"), index=True
    )
    title: Mapped[str] = mapped_column(sa.String(255))
    studies: Mapped[int] = mapped_column(sa.Integer, default=1)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)


CACHE_PLUGINS = ["tests.sodar_app.plugin:SamplesheetsPlugin"]
