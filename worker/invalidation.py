"""Invalidation in the worker: the per-child listener and outbox relay, the task-start
catch-up, and the logs and table knowledge the task and the CLI publish with.

Every prefork child starts, right after fork (a PROCESS_INIT_HOOK), one listener thread
on a Redis connection of its own (or polling the database-backed log) and one outbox relay
thread; both stop at child shutdown (a PROCESS_SHUTDOWN_HOOK). A solo or threads pool runs
tasks in the worker's own process: there both start when the worker is ready and stop at
its shutdown. Before every task, in any
pool, `task_prerun` reads the log's head (one call) and applies what the process has not
seen yet, so a task never reads a record invalidated before it started. A process that
declares no cached tables holds nothing to invalidate: no listener, no catch-up.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

import sqlalchemy as sa
from billiard.process import current_process
from celery import signals
from celery.concurrency import solo, thread

from cache.database import get_database
from cache.errors import ValidationError
from cache.invalidation import (
    DatabaseLog,
    InvalidationLog,
    RedisLog,
    Relay,
    RelayLoop,
    Tracker,
    start_listener,
    stop_listener,
)
from cache.invalidation.events import KeyCoercer
from cache.settings import Settings, load_settings
from worker.bootstrap import bootstrap
from worker.redis_client import get_redis
from worker.registry import Registry, get_registry

log = logging.getLogger(__name__)
_lock = threading.Lock()
_tracker: Tracker | None = None
_tracker_for: tuple[int, int] | None = None  # (registry, database) the tracker was made for
_relay: RelayLoop | None = None


def make_log(settings: Settings, *, for_listener: bool = False) -> InvalidationLog:
    """The Redis Stream when Redis is configured, else the app database's log table.

    `for_listener`: a Redis connection of the caller's own that never retries silently."""
    if settings.redis_url:
        if for_listener:
            return RedisLog.for_listener(settings.redis_url, maxlen=settings.stream_maxlen)
        return RedisLog(get_redis(settings.redis_url), maxlen=settings.stream_maxlen)
    return DatabaseLog(get_database(settings).engine, maxlen=settings.stream_maxlen)


def _pk_coercer(table: sa.Table) -> KeyCoercer | None:
    columns = list(table.primary_key.columns)
    if len(columns) != 1:
        return None
    try:
        kind = columns[0].type.python_type
    except NotImplementedError:
        return None
    if kind not in (int, str):
        return None

    def coerce(key: object) -> object:
        if kind is str:
            return str(key)
        if isinstance(key, int):
            return key
        try:
            return int(str(key).strip())
        except ValueError:
            raise ValidationError(
                f"{key!r} is not a primary key of table {table.name!r} (integer)"
            ) from None

    return coerce


def known_tables(settings: Settings, registry: Registry | None = None) -> dict:
    """Table name -> key coercer for every table an event may name: the configured
    models' tables and this process's declared cached tables."""
    tables: dict[str, KeyCoercer | None] = {}
    for metadata in bootstrap(settings.models).metadatas:
        for name, table in metadata.tables.items():
            tables[name] = _pk_coercer(table)
    registry = registry or get_registry()
    for name in registry.names():
        tables[name] = functools.partial(registry.coerce_key, name)
    return tables


def get_tracker() -> Tracker | None:
    """This process's tracker for its cached-table registry, or None when the process
    declares no cached tables. Follows a registry or database replaced by tests."""
    global _tracker, _tracker_for
    registry, database = get_registry(), get_database()
    key = (id(registry), id(database))
    tracker = _tracker
    if tracker is not None and _tracker_for == key:
        return tracker
    with _lock:
        if _tracker is None or _tracker_for != key:
            settings = load_settings()
            _tracker = None
            if registry.names():
                _tracker = Tracker(
                    registry, make_log(settings), max_keys=settings.invalidation_max_keys
                )
            _tracker_for = key
        return _tracker


def _in_pool_child() -> bool:
    return current_process().name != "MainProcess"


def start_in_child() -> None:
    """PROCESS_INIT_HOOK: start this child's listener and outbox relay threads.

    Only in prefork children: solo and threads pools start theirs in the worker's own
    process once it is ready (`_start_in_worker_process`)."""
    _forget()
    if _in_pool_child():
        _start_threads(get_tracker(), relay=True)


def stop_in_child() -> None:
    """PROCESS_SHUTDOWN_HOOK: stop the listener and the relay."""
    global _relay
    relay, _relay = _relay, None
    stop_listener(timeout=2.0)
    if relay is not None:
        relay.stop(timeout=2.0)


def start_in_process(*, relay: bool = False) -> Tracker | None:
    """One call for a web app (or any process outside the worker): start this process's
    listener for its cached-table registry, after any fork and before its first read.

    It first catches up synchronously, so reads that follow never see what was
    invalidated before the call. `relay`: also move outbox rows to the log here.
    Returns the tracker (`tracker.catch_up()` gives a request the task-start promise), or
    None when the process declares no cached tables. Stop with `stop_in_process()`."""
    tracker = get_tracker()
    if tracker is not None:
        tracker.catch_up()
    _start_threads(tracker, relay=relay)
    return tracker


def _start_threads(tracker: Tracker | None, *, relay: bool) -> None:
    """This process's listener (when it holds cached tables) and, with `relay`, its
    outbox relay, unless one already runs."""
    global _relay
    settings = load_settings()
    if tracker is not None:
        start_listener(
            tracker.target,
            make_log(settings, for_listener=True),
            tracker=tracker,
            stale_after=settings.listener_stale_after,
            max_keys=settings.invalidation_max_keys,
        )
    if relay and _relay is None:
        _relay = RelayLoop(Relay(get_database(settings).engine, make_log(settings))).start()


stop_in_process = stop_in_child

_started_in_worker_process = False


def _runs_tasks_in_process(pool: object) -> bool:
    return isinstance(pool, solo.TaskPool | thread.TaskPool)


@signals.worker_ready.connect
def _start_in_worker_process(sender=None, **_kwargs) -> None:
    """`celery worker -P solo|threads`: no child will ever start the listener and the
    outbox relay, so the worker's own process does (never with prefork: a parent with
    threads must not fork)."""
    global _started_in_worker_process
    if _runs_tasks_in_process(getattr(sender, "pool", None)):
        start_in_process(relay=True)
        _started_in_worker_process = True


@signals.worker_shutdown.connect
def _stop_in_worker_process(**_kwargs) -> None:
    global _started_in_worker_process
    if _started_in_worker_process:
        _started_in_worker_process = False
        stop_in_process()


def _forget() -> None:
    global _tracker, _tracker_for, _relay, _lock
    _tracker, _tracker_for, _relay = None, None, None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget)


@signals.task_prerun.connect
def catch_up_before_task(**_kwargs) -> None:
    """Apply the invalidations published before this task started (one head read)."""
    try:
        tracker = get_tracker()
    except Exception:
        # Without a tracker we cannot tell what was missed: serve nothing cached.
        log.exception("invalidation catch-up could not start; dropping cached tables")
        get_registry().drop_all("invalidation catch-up could not start")
        return
    if tracker is not None:
        tracker.catch_up()
