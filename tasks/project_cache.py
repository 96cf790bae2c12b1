"""Project cache tasks: `cachework.sync_cache`, `cachework.delete_cache`, and the per-scope
subtask `cachework.sync_project_cache` a sync of all projects fans out over the `cache`
queue (so several worker nodes share it), combined by `cachework.sync_cache_summary`.

`rebuild_items()` is the same rebuild as a plain function, for other tasks in the worker
process (invalidations); it goes through the same lock and dirty flag.
"""

from __future__ import annotations

import functools

import redis
import sqlalchemy as sa
from celery import chord, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from cache import plugins as cache_plugins
from cache import store
from cache.database import get_database
from cache.errors import NotFoundError, TransientError, ValidationError
from cache.locks import LockBackend, lock_backend
from cache.settings import load_settings
from cache.sync import ScopeResult, check_project, list_projects, rebuild, scope_label
from worker.redis_client import get_redis

RETRY = {
    "autoretry_for": (TransientError,),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 5,
}


@functools.cache
def registered_plugins() -> dict[str, cache_plugins.CachePlugin]:
    """This process's plugins (entry points + the configured model modules), found once."""
    return cache_plugins.discover(load_settings().models)


def _locks() -> LockBackend:
    settings = load_settings()
    return lock_backend(
        get_database().engine, get_redis(settings.redis_url), settings.cache_lock_ttl_ms
    )


def _check_name(name: object) -> list[str] | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValidationError(f"name={name!r} must be an item name (string) or None")
    return [name]


def validate(
    project: object, app_name: object, names: object, user: object = None
) -> tuple[str | None, list[cache_plugins.CachePlugin], list[str] | None]:
    """Check every argument before anything runs: bad input changes nothing."""
    if app_name is not None and not isinstance(app_name, str):
        raise ValidationError(f"app_name={app_name!r} must be a string or None")
    store.validate_user(user)
    chosen = cache_plugins.select(registered_plugins(), app_name)
    names = cache_plugins.check_names(chosen, names)
    with get_database().session() as session:
        project = check_project(session, project)
    return project, chosen, names


def rebuild_scope_now(
    project: str | None,
    chosen: list[cache_plugins.CachePlugin],
    names: list[str] | None,
    user: str | None,
) -> ScopeResult:
    """One scope (a project, or None: the site-wide items), rebuilt in this process.

    Plugin failures are reported in the result; a lost connection to Redis or the database
    (the lock and dirty flag) is a TransientError, so the task retries and the request is
    not lost."""
    try:
        return rebuild(
            get_database().session,
            _locks(),
            chosen,
            project,
            names,
            user,
            load_settings().cache_item_max_bytes,
            abort_on=(SoftTimeLimitExceeded,),
        )
    except (redis.ConnectionError, redis.TimeoutError, sa.exc.OperationalError) as exc:
        raise TransientError(
            f"cache rebuild of {scope_label(project)} could not reach its lock: "
            f"{exc.__class__.__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
        ) from exc


def scopes_of(project: str | None) -> list[str | None]:
    """The scopes a rebuild of `project` covers: that project, or (None) the site-wide
    items (scope None) and every project."""
    if project is not None:
        return [project]
    with get_database().session() as session:
        return [None, *list_projects(session)]


def rebuild_items(
    project: str | None,
    app_name: str | None,
    names: list[str] | None,
    user: str | None = None,
) -> dict:
    """Rebuild items in this process, through the same lock and dirty flag as sync_cache.

    `project` None covers every project and the site-wide items; `app_name` None every
    app; `names` None every item. Unknown project or app: NotFoundError naming it.
    Returns `{"updated": int, "errors": [str]}`; a scope whose rebuild is running elsewhere
    is marked dirty and rebuilt by that run (not counted here).
    """
    project, chosen, names = validate(project, app_name, names, user)
    total = ScopeResult()
    for scope in scopes_of(project):
        total.add(rebuild_scope_now(scope, chosen, names, user))
    return {"updated": total.updated, "errors": total.errors}


def _project_gone(project: str) -> bool:
    """True if the (well-formed) project has no row in `projects` any more."""
    try:
        with get_database().session() as session:
            check_project(session, project)
    except NotFoundError:
        return True
    return False


@shared_task(name="cachework.sync_project_cache", **RETRY)
def sync_project_cache(
    project: str | None = None,
    app_name: str | None = None,
    name: str | None = None,
    user: str | None = None,
    missing_ok: bool = False,
) -> dict:
    """One scope of a sync: `project`, or the site-wide items when it is None.

    With `missing_ok` (the fan-out of a full sync) a project deleted since the projects
    were listed is skipped, not a failure that would lose the whole sync's summary."""
    try:
        project, chosen, names = validate(project, app_name, _check_name(name), user)
    except NotFoundError:
        if not missing_ok or project is None or not _project_gone(project):
            raise
        return {"updated": 0, "projects": 0, "errors": []}
    result = rebuild_scope_now(project, chosen, names, user)
    return {
        "updated": result.updated,
        "projects": 0 if project is None else 1,
        "errors": result.errors,
    }


@shared_task(name="cachework.sync_cache_summary")
def sync_cache_summary(results: list[dict]) -> dict:
    """Combine the per-scope results of a fanned-out sync."""
    return {
        "updated": sum(r["updated"] for r in results),
        "projects": sum(r["projects"] for r in results),
        "errors": [e for r in results for e in r["errors"]],
    }


@shared_task(name="cachework.sync_cache", bind=True, **RETRY)
def sync_cache(
    self,
    project: str | None = None,
    app_name: str | None = None,
    name: str | None = None,
    user: str | None = None,
) -> dict:
    """Rebuild cache items: one project here, or all projects fanned out over the queue.

    Returns `{"updated", "projects", "errors"}`; for all projects the task is replaced by
    a chord of one `cachework.sync_project_cache` per project (plus the site-wide items),
    whose combined summary becomes this task's result.
    """
    project, _chosen, _names = validate(project, app_name, _check_name(name), user)
    if project is not None:
        return sync_project_cache.run(project, app_name, name, user)
    header = [
        sync_project_cache.si(scope, app_name, name, user, missing_ok=True)
        for scope in scopes_of(None)
    ]
    raise self.replace(chord(header, sync_cache_summary.s()))


def validate_delete(project: object, app_name: object) -> str | None:
    """Check a delete's arguments; returns the canonical project id.

    A project or app that no longer exists but still has items is accepted, so leftovers
    can be removed; anything else unknown is a NotFoundError naming it."""
    if app_name is not None and not isinstance(app_name, str):
        raise ValidationError(f"app_name={app_name!r} must be a string or None")
    with get_database().session() as session:
        project = check_project(session, project, allow_orphans=True)
        if app_name is not None:
            known = sorted(set(registered_plugins()) | set(store.app_names(session)))
            if app_name not in known:
                raise NotFoundError(
                    f"app_name={app_name!r} has no cache plugin and no items "
                    f"(known apps: {', '.join(known) or 'none'})"
                )
    return project


@shared_task(name="cachework.delete_cache", **RETRY)
def delete_cache(project: str | None = None, app_name: str | None = None) -> dict:
    """Delete cache items: of one project and/or app, or every item (no arguments)."""
    project = validate_delete(project, app_name)
    with get_database().session() as session:
        deleted = store.delete_items(session, project=project, app_name=app_name)
    return {"deleted": deleted}
