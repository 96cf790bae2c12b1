"""Queues and task routes of cachework: plain data and two functions.

Importing this module reads no settings and imports no Celery, so a web app can route
cachework's tasks with one line and nothing else of ours::

    celery.conf.task_routes = ("cachework.worker.routing.route_task",)

`route_task` is a Celery router (Celery imports it by name): it sends every `cachework.*`
task to cachework's own queue and leaves every other task alone (None: the app's own
routing, by default Celery's default queue `celery`, decides).

`queues(shared)` is the one list of queues a cachework worker consumes. On a broker
dedicated to cachework (the default) that includes Celery's default queue `celery`, so a
plain `Celery(broker, backend).send_task("cachework.lookup", ...)` with no routing set-up
reaches a cachework worker. On a broker shared with the app's own Celery workers
(CACHEWORK_SHARED_BROKER on) cachework workers leave `celery` to the app's workers, and
clients route cachework's tasks with `route_task`.
"""

from __future__ import annotations

from typing import Any

# Celery's default queue, exchange and routing key (`task_default_queue`): where a client
# with no routing set-up publishes every task.
DEFAULT_QUEUE = "celery"
# cachework's own queues, each with a direct exchange and routing key of the same name.
QUEUES = ("versions", "cache", "invalidations")
PREFIX = "cachework."

# The task names of the public contract, declared once: tasks register under them, the
# CLI, the demo, beat and clients send them.
IMPORT_VERSIONS = "cachework.import_versions"
SYNC_CACHE = "cachework.sync_cache"
SYNC_PROJECT_CACHE = "cachework.sync_project_cache"
REBUILD_CHANGED = "cachework.rebuild_changed"
SYNC_CACHE_SUMMARY = "cachework.sync_cache_summary"
DELETE_CACHE = "cachework.delete_cache"
LOOKUP = "cachework.lookup"
CACHE_STATUS = "cachework.cache_status"
PING = "cachework.ping"
PROCESS_INVALIDATION = "cachework.process_invalidation"
INVALIDATION_PROBE = "cachework.invalidation_probe"
# Tasks not listed here (a `cachework.*` helper task such as a chord callback) go to
# FALLBACK_QUEUE.
ROUTES = {
    IMPORT_VERSIONS: "versions",
    SYNC_CACHE: "cache",
    SYNC_PROJECT_CACHE: "cache",
    REBUILD_CHANGED: "cache",
    DELETE_CACHE: "cache",
    LOOKUP: "cache",
    CACHE_STATUS: "cache",
    PING: "cache",
    PROCESS_INVALIDATION: "invalidations",
    # Internal: a fanned-out sync's summary, and the probe tests and benchmarks send.
    SYNC_CACHE_SUMMARY: "cache",
    INVALIDATION_PROBE: "invalidations",
}
FALLBACK_QUEUE = "cache"
# The one line a web app adds to its Celery client (shown in the README and in logs).
ROUTING_LINE = 'celery.conf.task_routes = ("cachework.worker.routing.route_task",)'


def route_task(
    name: str,
    args: Any = None,
    kwargs: Any = None,
    options: Any = None,
    task: Any = None,
    **_kw: Any,
) -> dict[str, str] | None:
    """Celery router: `{"queue": ...}` for a cachework task, None for any other task."""
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return None
    return {"queue": ROUTES.get(name, FALLBACK_QUEUE)}


def queues(shared: bool) -> tuple[str, ...]:
    """The queues a cachework worker consumes: its own, plus Celery's default queue
    unless the broker is shared with the app's own workers (CACHEWORK_SHARED_BROKER)."""
    return QUEUES if shared else (*QUEUES, DEFAULT_QUEUE)
