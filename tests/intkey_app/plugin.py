"""The integer-keyed app's cache plugin, app `board`.

Per project: `counts` = {"name", "open", "done"}. No site-wide items. `project` arrives as
the canonical key string ("42"); the plugin compares it as an int.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.intkey_app.models import Project, Task


class BoardPlugin:
    app_name = "board"
    item_names = ("counts",)

    def update_cache(
        self, store, session: Session, project: str | None = None, name: str | None = None
    ) -> None:
        if project is None:
            return
        store.set_item("counts", counts(session, int(project)))


def counts(session: Session, project: int) -> dict:
    name = session.execute(sa.select(Project.name).where(Project.id == project)).scalar_one()
    done, open_ = session.execute(
        sa.select(
            sa.func.count(Task.id).filter(Task.done.is_(True)),
            sa.func.count(Task.id).filter(Task.done.is_(False)),
        ).where(Task.project_id == project)
    ).one()
    return {"name": name, "open": open_, "done": done}
