"""The rules of the version import, project-cache and invalidation jobs, as plain
functions of a runtime.

A Celery task or a CLI command is a few lines that call these: check every argument
before anything runs (bad input changes nothing), then rebuild, delete or publish through
the runtime's database, locks, plugins, projects and invalidation log. Nothing here
imports Celery; the caller passes its time limit's exception in `abort_on`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cache.invalidation import publish, validate_event
from cache.items import plugins as cache_plugins
from cache.items import store
from cache.items.sync import ScopeResult, rebuild, scope_label
from cachework.errors import NotFoundError, ValidationError, transient_errors

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)
Plugins = list[cache_plugins.CachePlugin]


def import_versions(runtime: Runtime, models: object = None, **options: object) -> dict:
    """The version import of this runtime's versioned models (every one, or those named
    in `models`) in one session; `options` as `importers.versions.import_versions` takes
    them. Returns its result as JSON; an unreachable database is a TransientError."""
    from importers.versions import import_versions as run_import

    with transient_errors("database"), runtime.database.session() as session:
        return run_import(session, runtime.models.versioned, names=models, **options).as_dict()


def item_names(name: object) -> list[str] | None:
    """A task's single `name` argument as the list the rules take."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValidationError(f"name={name!r} must be an item name (string) or None")
    return [name]


def check_sync(
    runtime: Runtime, project: object, app_name: object, names: object, user: object = None
) -> tuple[str | None, Plugins, list[str] | None]:
    """Check a rebuild's arguments; returns the canonical project, the plugins and names."""
    if app_name is not None and not isinstance(app_name, str):
        raise ValidationError(f"app_name={app_name!r} must be a string or None")
    store.validate_user(user)
    chosen = cache_plugins.select(runtime.plugins, app_name)
    names = cache_plugins.check_names(chosen, names)
    with transient_errors("database"), runtime.database.session() as session:
        project = runtime.projects.check(session, project)
    return project, chosen, names


def scopes_of(runtime: Runtime, project: str | None) -> list[str | None]:
    """The scopes a rebuild of `project` covers: that project, or (None) the site-wide
    items (scope None) and every project."""
    if project is not None:
        return [project]
    with transient_errors("database"), runtime.database.session() as session:
        return [None, *runtime.projects.list(session)]


def rebuild_scope(
    runtime: Runtime,
    project: str | None,
    chosen: Plugins,
    names: list[str] | None,
    user: str | None,
    abort_on: tuple[type[BaseException], ...] = (),
    see_through: bool = False,
) -> ScopeResult:
    """One scope (a project, or None: the site-wide items), rebuilt in this process.

    Plugin failures are reported in the result; an unreachable lock store or database
    is a TransientError, so the caller retries and the request is not lost.
    `see_through`: wait for a running rebuild of the scope rather than defer to it (for
    a message delivered again; see `cache.items.sync.rebuild_scope`)."""
    with transient_errors(f"cache rebuild of {scope_label(project)}"):
        return rebuild(
            runtime.database.session,
            runtime.locks,
            chosen,
            project,
            names,
            user,
            runtime.settings.cache_item_max_bytes,
            abort_on=abort_on,
            see_through=see_through,
        )


def rebuild_items(
    runtime: Runtime,
    project: object,
    app_name: object,
    names: object,
    user: object = None,
    abort_on: tuple[type[BaseException], ...] = (),
    on_scope: Callable[[int, int, str | None], None] | None = None,
) -> dict:
    """Rebuild items here, through the same lock and dirty flag as every sync.

    `project` None covers every project and the site-wide items; `app_name` None every
    app; `names` None every item. Returns `{"updated", "projects", "errors", "deferred"}`;
    a scope whose rebuild runs elsewhere is marked dirty and rebuilt by that run (counted
    in "deferred"). `on_scope(done, total, scope)` is called before each scope (a CLI's
    progress bar)."""
    project, chosen, names = check_sync(runtime, project, app_name, names, user)
    scopes = scopes_of(runtime, project)
    total, deferred = ScopeResult(), 0
    for done, scope in enumerate(scopes):
        if on_scope is not None:
            on_scope(done, len(scopes), scope)
        result = rebuild_scope(runtime, scope, chosen, names, user, abort_on)
        total.add(result)
        deferred += result.deferred
    projects = sum(1 for scope in scopes if scope is not None)
    return {
        "updated": total.updated,
        "projects": projects,
        "errors": total.errors,
        "deferred": deferred,
    }


def sync_scope(
    runtime: Runtime,
    project: object,
    app_name: object = None,
    name: object = None,
    user: object = None,
    *,
    missing_ok: bool = False,
    abort_on: tuple[type[BaseException], ...] = (),
    see_through: bool = False,
) -> dict:
    """One scope of a sync: `project`, or the site-wide items when it is None.

    With `missing_ok` (the fan-out of a full sync) a project deleted since the projects
    were listed is skipped, not a failure that would lose the whole sync's summary.
    `see_through`: as for `rebuild_scope`."""
    try:
        project, chosen, names = check_sync(runtime, project, app_name, item_names(name), user)
    except NotFoundError:
        if not missing_ok or project is None or not _project_gone(runtime, project):
            raise
        return {"updated": 0, "projects": 0, "errors": []}
    result = rebuild_scope(runtime, project, chosen, names, user, abort_on, see_through)
    return {
        "updated": result.updated,
        "projects": 0 if project is None else 1,
        "errors": result.errors,
    }


def combine(results: list[dict]) -> dict:
    """The summary of a fanned-out sync from its per-scope results."""
    return {
        "updated": sum(r["updated"] for r in results),
        "projects": sum(r["projects"] for r in results),
        "errors": [e for r in results for e in r["errors"]],
    }


def _project_gone(runtime: Runtime, project: object) -> bool:
    """True if the (well-formed) project has no row in the app's projects any more."""
    try:
        with runtime.database.session() as session:
            runtime.projects.check(session, project)
    except NotFoundError:
        return True
    return False


def check_delete(runtime: Runtime, project: object, app_name: object) -> str | None:
    """Check a delete's arguments; returns the canonical project.

    A project or app that no longer exists but still has items is accepted, so leftovers
    can be removed; anything else unknown is a NotFoundError naming it."""
    if app_name is not None and not isinstance(app_name, str):
        raise ValidationError(f"app_name={app_name!r} must be a string or None")
    with transient_errors("database"), runtime.database.session() as session:
        project = runtime.projects.check(session, project, allow_orphans=True)
        if app_name is not None:
            known = sorted(set(runtime.plugins) | set(store.app_names(session)))
            if app_name not in known:
                raise NotFoundError(
                    f"app_name={app_name!r} has no cache plugin and no items "
                    f"(known apps: {', '.join(known) or 'none'})"
                )
    return project


def delete_items(runtime: Runtime, project: object = None, app_name: object = None) -> dict:
    """Delete cache items: of one project and/or app, or every item (no arguments)."""
    project = check_delete(runtime, project, app_name)
    with transient_errors("database"), runtime.database.session() as session:
        deleted = store.delete_items(session, project=project, app_name=app_name)
    return {"deleted": deleted}


def invalidate(
    runtime: Runtime,
    table: object,
    keys: object = None,
    project: object = None,
    app_name: object = None,
    names: object = None,
    abort_on: tuple[type[BaseException], ...] = (),
) -> dict:
    """Publish an invalidation to every process's cached tables and rebuild the project
    cache items it names: `{"event_id", "rebuilt"}`.

    Everything is checked before anything is published; items are rebuilt only when the
    event names a scope (a project, an app or item names)."""
    max_keys = runtime.settings.invalidation_max_keys
    event = validate_event(
        table,
        keys,
        project,
        app_name,
        names,
        known_tables=runtime.known_tables(),
        max_keys=max_keys,
    )
    names_list = list(event.names) if event.names is not None else None
    scoped = any(v is not None for v in (event.project, event.app_name, event.names))
    if scoped:
        check_sync(runtime, event.project, event.app_name, names_list)
    with transient_errors("invalidation log"):
        event_id = publish(
            event.table,
            list(event.keys) if event.keys is not None else None,
            event.project,
            event.app_name,
            names_list,
            log=runtime.invalidation_log(),
            max_keys=max_keys,
        )
    rebuilt = 0
    if scoped:
        outcome = rebuild_items(
            runtime, event.project, event.app_name, names_list, abort_on=abort_on
        )
        rebuilt = outcome["updated"]
        for error in outcome["errors"]:
            log.warning("invalidation %s: rebuilding cache items failed: %s", event_id, error)
    return {"event_id": event_id, "rebuilt": rebuilt}
