"""`cachework.process_invalidation`: validate an invalidation, publish it to the log (every
worker process's cached tables hear it), and rebuild the project cache items it names."""

from __future__ import annotations

import logging
import os

from celery import shared_task

from cache.errors import TransientError
from cache.invalidation import publish, validate_event
from cache.settings import load_settings
from worker.invalidation import get_tracker, known_tables, make_log

log = logging.getLogger(__name__)


def invalidate(
    table: object,
    keys: object = None,
    project: object = None,
    app_name: object = None,
    names: object = None,
) -> dict:
    """The task's work as a plain function (the CLI runs it in-process).

    Everything is checked before anything is published; project cache items are rebuilt
    only when the event names a scope (a project, an app or item names)."""
    from tasks.project_cache import rebuild_items, validate

    settings = load_settings()
    event = validate_event(
        table,
        keys,
        project,
        app_name,
        names,
        known_tables=known_tables(settings),
        max_keys=settings.invalidation_max_keys,
    )
    scoped = any(v is not None for v in (event.project, event.app_name, event.names))
    if scoped:
        validate(event.project, event.app_name, list(event.names) if event.names else None)
    event_id = publish(
        event.table,
        list(event.keys) if event.keys is not None else None,
        event.project,
        event.app_name,
        list(event.names) if event.names is not None else None,
        log=make_log(settings),
        max_keys=settings.invalidation_max_keys,
    )
    rebuilt = 0
    if scoped:
        names_list = list(event.names) if event.names is not None else None
        outcome = rebuild_items(event.project, event.app_name, names_list)
        rebuilt = outcome["updated"]
        for error in outcome["errors"]:
            log.warning("invalidation %s: rebuilding cache items failed: %s", event_id, error)
    return {"event_id": event_id, "rebuilt": rebuilt}


@shared_task(
    name="cachework.process_invalidation",
    autoretry_for=(TransientError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
)
def process_invalidation(
    table: str,
    keys: list | None = None,
    project: str | None = None,
    app_name: str | None = None,
    names: list[str] | None = None,
) -> dict:
    """Publish an invalidation and rebuild the items it names: `{"event_id", "rebuilt"}`."""
    return invalidate(table, keys, project, app_name, names)


@shared_task(name="cachework.invalidation_probe")
def invalidation_probe(since: str = "0") -> dict:
    """This process's pid, cursor and recent (event id, applied at) pairs after `since`:
    what tests and the benchmark use to see every child's listener."""
    from cache.invalidation.events import id_key

    tracker = get_tracker()
    recent = [] if tracker is None else list(tracker.recent)
    floor = id_key(since)
    return {
        "pid": os.getpid(),
        "cursor": tracker.cursor if tracker is not None else None,
        "applied": [[i, t] for i, t in recent if id_key(i) > floor],
        "listener": dict(tracker.stats) if tracker is not None else {},
    }
