"""The project-cache and invalidation jobs, as plain functions of a runtime: the wiring
between a process's runtime and the rules of `cache/` (requests, rebuilds, publish).

A Celery task or a CLI command is a few lines: it parses its arguments into a typed
request once (`sync_request`, `delete_request`, `invalidation_request`: bad input names
the bad value and changes nothing), then runs the job with it (`sync`, `sync_one`,
`delete`, `process_invalidation`), which trusts the request and returns a typed result
(`cachework.cache.results`; `to_json()` is the task's result). Nothing here imports Celery; the
caller passes its time limit's exception in `abort_on`.

`rebuild_items`, `sync_scope`, `delete_items`, `invalidate` and `combine` take and return
plain values (parse, run, `to_json()`), for Python callers and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cachework.cache.invalidation import publish_event
from cachework.cache.items import changes, store
from cachework.cache.items.sync import ScopeResult, rebuild, scope_label
from cachework.cache.requests import (
    DeleteRequest,
    InvalidationRequest,
    SyncRequest,
    item_names,
)
from cachework.cache.results import DeleteResult, InvalidationResult, SyncResult
from cachework.errors import NotFoundError, transient_errors

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from cachework.cache.items.plugins import CachePlugin
    from cachework.worker.runtime import Runtime

__all__ = [
    "combine",
    "delete",
    "delete_items",
    "delete_request",
    "invalidate",
    "invalidation_request",
    "item_names",
    "process_invalidation",
    "rebuild_changed",
    "rebuild_items",
    "rebuild_scope",
    "scope_request",
    "scopes_of",
    "sync",
    "sync_one",
    "sync_request",
    "sync_scope",
]

log = logging.getLogger(__name__)
Abort = tuple[type[BaseException], ...]
OnScope = Callable[[int, int, "str | None"], None]


# --- parsing: once, at the edge, with one session -------------------------------------


@contextmanager
def _session(runtime: Runtime, allow_orphans: bool = False) -> Iterator[_Checks]:
    """One session for a request's checks (it connects only if a check needs to)."""
    with transient_errors("database"), runtime.database.session() as session:
        yield _Checks(runtime, session, allow_orphans)


class _Checks:
    """What a request is checked against, bound to one session."""

    def __init__(self, runtime: Runtime, session: Session, allow_orphans: bool) -> None:
        self.runtime, self.session, self.allow_orphans = runtime, session, allow_orphans

    def project(self, project: object) -> str | None:
        return self.runtime.projects.check(self.session, project, self.allow_orphans)

    def stored_apps(self) -> list[str]:
        return store.app_names(self.session)


def sync_request(
    runtime: Runtime,
    project: object = None,
    app_name: object = None,
    names: object = None,
    user: object = None,
) -> SyncRequest:
    """A sync's arguments checked against this runtime's plugins and projects."""
    with _session(runtime) as checks:
        return SyncRequest.parse(
            project, app_name, names, user, plugins=runtime.plugins, check_project=checks.project
        )


def delete_request(
    runtime: Runtime, project: object = None, app_name: object = None
) -> DeleteRequest:
    """A delete's arguments checked; a project or app that no longer exists but still has
    items is accepted, so leftovers can be removed."""
    with _session(runtime, allow_orphans=True) as checks:
        return DeleteRequest.parse(
            project,
            app_name,
            plugins=runtime.plugins,
            check_project=checks.project,
            stored_apps=checks.stored_apps,
        )


def invalidation_request(
    runtime: Runtime,
    table: object,
    keys: object = None,
    project: object = None,
    app_name: object = None,
    names: object = None,
) -> InvalidationRequest:
    """An invalidation checked: a table this runtime knows (keys coerced to its key
    type), at most CACHEWORK_INVALIDATION_MAX_KEYS keys, and the scope it names."""
    with _session(runtime) as checks:
        return InvalidationRequest.parse(
            table,
            keys,
            project,
            app_name,
            names,
            known_tables=runtime.known_tables(),
            max_keys=runtime.settings.invalidation_max_keys,
            plugins=runtime.plugins,
            check_project=checks.project,
        )


# --- the jobs: they trust their request ------------------------------------------------


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
    chosen: list[CachePlugin],
    names: list[str] | None,
    user: str | None,
    abort_on: Abort = (),
    see_through: bool = False,
) -> ScopeResult:
    """One scope (a project, or None: the site-wide items), rebuilt in this process.

    Plugin failures are reported in the result; an unreachable lock store or database
    is a TransientError, so the caller retries and the request is not lost.
    `see_through`: wait for a running rebuild of the scope rather than defer to it (for
    a message delivered again; see `cachework.cache.items.sync.rebuild_scope`)."""
    started = _change_clock(runtime)
    total = ScopeResult()
    for plugin in chosen:  # one at a time, as `rebuild` does: each one's changes apart
        with transient_errors(f"cache rebuild of {scope_label(project)}"):
            result = rebuild(
                runtime.database.session,
                runtime.locks,
                [plugin],
                project,
                names,
                user,
                runtime.settings.cache_item_max_bytes,
                abort_on=abort_on,
                see_through=see_through,
            )
        if started is not None and not result.errors:
            # A plugin that raised leaves its changes pending: sent again after
            # CACHEWORK_REBUILD_RESEND, never left stale for good.
            _built(runtime, project, [plugin.app_name], names, started)
        total.add(result)
    return total


def _change_clock(runtime: Runtime) -> int | None:
    """The database's clock before a rebuild starts (None when no plugin declares what
    its items read): what changed before it is what this rebuild reads."""
    if not runtime.item_reads:
        return None
    with transient_errors("database"), runtime.database.engine.connect() as conn:
        return changes.now_ms(conn)


def _built(
    runtime: Runtime,
    project: str | None,
    app_names: list[str],
    names: list[str] | None,
    started: int,
) -> None:
    """Whatever rebuilt a scope (a data-driven request, `sync_cache`, the full sync):
    the changes it read are no longer pending (cache/items/changes.py)."""
    s = runtime.settings
    delay, every = int(s.rebuild_delay * 1000), int(s.rebuild_every * 1000)
    with transient_errors("database"), runtime.database.engine.begin() as conn:
        for app_name in app_names:
            changes.built(conn, project, app_name, names, started, delay, every)


def rebuild_changed(
    runtime: Runtime,
    project: object,
    app_name: object,
    names: object,
    abort_on: Abort = (),
    see_through: bool = False,
) -> dict:
    """A data-driven rebuild (`cachework.rebuild_changed`, sent by the change follower):
    `names` (None: every item) of one app for one scope. A project deleted since the
    change is nothing to rebuild: its pending changes are cleared.
    `{"updated", "projects", "errors"}`."""
    started = _change_clock(runtime)
    request = scope_request(runtime, project, app_name, names, missing_ok=True)
    if request is None:
        if started is not None and isinstance(app_name, str):
            _built(runtime, project, [app_name], None, started)  # type: ignore[arg-type]
        return SyncResult().to_json()
    return sync_one(runtime, request, abort_on, see_through).to_json()


def sync(
    runtime: Runtime, request: SyncRequest, abort_on: Abort = (), on_scope: OnScope | None = None
) -> SyncResult:
    """Rebuild the request's items here, scope after scope, through the same lock and
    dirty flag as every sync. A scope whose rebuild runs elsewhere is marked dirty and
    rebuilt by that run (counted in `deferred`). `on_scope(done, total, scope)` is called
    before each scope (a CLI's progress bar)."""
    chosen = request.plugins(runtime.plugins)
    scopes = scopes_of(runtime, request.project)
    total = SyncResult(deferred=0)
    for done, scope in enumerate(scopes):
        if on_scope is not None:
            on_scope(done, len(scopes), scope)
        result = rebuild_scope(runtime, scope, chosen, request.name_list, request.user, abort_on)
        total.add(_of_scope(result, scope))
    return total


def sync_one(
    runtime: Runtime, request: SyncRequest, abort_on: Abort = (), see_through: bool = False
) -> SyncResult:
    """One scope of a sync: the request's project, or the site-wide items when it has
    none (never every project). `see_through`: as for `rebuild_scope`."""
    chosen = request.plugins(runtime.plugins)
    result = rebuild_scope(
        runtime, request.project, chosen, request.name_list, request.user, abort_on, see_through
    )
    scope = _of_scope(result, request.project)
    scope.deferred = None  # a task's result has no such key
    return scope


def _of_scope(result: ScopeResult, project: str | None) -> SyncResult:
    return SyncResult(
        result.updated, 0 if project is None else 1, list(result.errors), int(result.deferred)
    )


def delete(runtime: Runtime, request: DeleteRequest) -> DeleteResult:
    """Delete the request's items: of one project and/or app, or every item."""
    with transient_errors("database"), runtime.database.session() as session:
        deleted = store.delete_items(session, project=request.project, app_name=request.app_name)
    return DeleteResult(deleted)


def process_invalidation(
    runtime: Runtime, request: InvalidationRequest, abort_on: Abort = ()
) -> InvalidationResult:
    """Publish the request's event to every process's cached tables, then rebuild the
    project cache items it names (if it names a scope). Rebuild errors are logged: the
    event is out, and the scope's next sync redoes them."""
    with transient_errors("invalidation log"):
        event_id = publish_event(request.event, log=runtime.invalidation_log())
    if request.sync is None:
        return InvalidationResult(event_id, 0)
    outcome = sync(runtime, request.sync, abort_on=abort_on)
    for error in outcome.errors:
        log.warning("invalidation %s: rebuilding cache items failed: %s", event_id, error)
    return InvalidationResult(event_id, outcome.updated)


# --- plain values in, JSON out: parse, run, to_json -------------------------------------


def rebuild_items(
    runtime: Runtime,
    project: object,
    app_name: object,
    names: object,
    user: object = None,
    abort_on: Abort = (),
    on_scope: OnScope | None = None,
) -> dict:
    """`sync` of plain arguments: `{"updated", "projects", "errors", "deferred"}`."""
    request = sync_request(runtime, project, app_name, names, user)
    return sync(runtime, request, abort_on, on_scope).to_json()


def scope_request(
    runtime: Runtime,
    project: object,
    app_name: object = None,
    names: object = None,
    user: object = None,
    *,
    missing_ok: bool = False,
) -> SyncRequest | None:
    """The request of one scope of a sync. With `missing_ok` (the fan-out of a full
    sync) a project deleted since the projects were listed gives None (nothing to do),
    not a failure that would lose the whole sync's summary."""
    try:
        return sync_request(runtime, project, app_name, names, user)
    except NotFoundError:
        if not missing_ok or project is None or not _project_gone(runtime, project):
            raise
        return None


def sync_scope(
    runtime: Runtime,
    project: object,
    app_name: object = None,
    name: object = None,
    user: object = None,
    *,
    missing_ok: bool = False,
    abort_on: Abort = (),
    see_through: bool = False,
) -> dict:
    """`sync_one` of plain arguments (`missing_ok`: as for `scope_request`):
    `{"updated", "projects", "errors"}`."""
    request = scope_request(
        runtime, project, app_name, item_names(name), user, missing_ok=missing_ok
    )
    if request is None:
        return SyncResult().to_json()
    return sync_one(runtime, request, abort_on, see_through).to_json()


def combine(results: list[dict]) -> dict:
    """The summary of a fanned-out sync from its per-scope results (as JSON)."""
    return SyncResult.combine(SyncResult.from_json(r) for r in results).to_json()


def _project_gone(runtime: Runtime, project: object) -> bool:
    """True if the (well-formed) project has no row in the app's projects any more."""
    try:
        with runtime.database.session() as session:
            runtime.projects.check(session, project)
    except NotFoundError:
        return True
    return False


def delete_items(runtime: Runtime, project: object = None, app_name: object = None) -> dict:
    """`delete` of plain arguments: `{"deleted"}`."""
    return delete(runtime, delete_request(runtime, project, app_name)).to_json()


def invalidate(
    runtime: Runtime,
    table: object,
    keys: object = None,
    project: object = None,
    app_name: object = None,
    names: object = None,
    abort_on: Abort = (),
) -> dict:
    """`process_invalidation` of plain arguments: `{"event_id", "rebuilt"}`."""
    request = invalidation_request(runtime, table, keys, project, app_name, names)
    return process_invalidation(runtime, request, abort_on).to_json()
