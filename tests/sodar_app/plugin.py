"""The SODAR-shaped app's cache plugin, app `samplesheets`.

Per project: `summary` = {"title", "investigations", "studies", "active"}. Site-wide (no
project): `overview` = {"projects", "categories", "investigations"}. `project` arrives as
the canonical key string (lowercase hyphenated uuid); the plugin compares it as a uuid.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.sodar_app.models import Investigation, Project


class SamplesheetsPlugin:
    app_name = "samplesheets"
    item_names = ("summary", "overview")

    def update_cache(
        self, store, session: Session, project: str | None = None, name: str | None = None
    ) -> None:
        if project is None:
            if name in (None, "overview"):
                store.set_item("overview", overview(session))
            return
        if name in (None, "summary"):
            store.set_item("summary", summary(session, uuid.UUID(project)))


def summary(session: Session, project: uuid.UUID) -> dict:
    title = session.execute(
        sa.select(Project.title).where(Project.sodar_uuid == project)
    ).scalar_one()
    count, studies, active = session.execute(
        sa.select(
            sa.func.count(Investigation.id),
            sa.func.coalesce(sa.func.sum(Investigation.studies), 0),
            sa.func.count(Investigation.id).filter(Investigation.active.is_(True)),
        ).where(Investigation.project_uuid == project)
    ).one()
    return {"title": title, "investigations": count, "studies": studies, "active": active}


def overview(session: Session) -> dict:
    kinds = dict(
        session.execute(sa.select(Project.type, sa.func.count()).group_by(Project.type)).all()
    )
    investigations = session.execute(sa.select(sa.func.count(Investigation.id))).scalar_one()
    return {
        "projects": kinds.get("PROJECT", 0),
        "categories": kinds.get("CATEGORY", 0),
        "investigations": investigations,
    }
