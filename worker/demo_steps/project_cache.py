"""Demo step: a project cache sync through the worker, then a read of the items."""

from __future__ import annotations

import json

from cachework.cache.items import store
from cachework.cache.items.projects import ProjectSource
from cachework.worker import routing


def run(ctx) -> None:
    ctx.console.rule("project caches")
    summary = ctx.call(routing.SYNC_CACHE, timeout=120, user="demo")
    ctx.console.print(f"  cachework.sync_cache -> {summary}")
    with ctx.database.session() as session:
        projects = ProjectSource.from_settings(ctx.settings).list(session)
        for project in projects[:3]:
            for item in store.get_project_items(session, project, app_name="inventory"):
                ctx.console.print(
                    f"  {project[:8]}… {item.app_name}/{item.name} "
                    f"(updated {item.updated_at:%H:%M:%S.%f}): {json.dumps(item.data)}",
                    highlight=False,
                )
    one = projects[0]
    again = ctx.call(routing.SYNC_CACHE, project=one, app_name="inventory")
    ctx.console.print(f"  one project, one app -> {again}")
    deleted = ctx.call(routing.DELETE_CACHE, project=one)
    ctx.console.print(f"  cachework.delete_cache(project={one[:8]}…) -> {deleted}")
