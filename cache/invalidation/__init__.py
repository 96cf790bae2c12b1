"""Invalidation: every process that caches tables hears every invalidation, durably.

Events go into a durable, ordered log (a Redis Stream, or a table in the app database);
each process runs one listener thread that tails the log from its own cursor and marks
the named records invalid in its cached tables. Usable from any process, a web app
included: nothing here imports Celery or the worker.

    log = RedisLog(redis_client)                       # or DatabaseLog(engine)
    event_id = publish("categories", [3], log=log)     # after your change committed
    publish("categories", [3], session=s)              # or: in your own transaction
    start_listener(registry, RedisLog.for_listener(url))   # once per process, after fork
    wait_for(event_id, timeout=5)                      # read barrier
"""

from __future__ import annotations

import os
import threading

from sqlalchemy.orm import Session

from cache.errors import ConfigError
from cache.invalidation.db_log import DatabaseLog
from cache.invalidation.events import Event, KnownTables, decode_event, id_key, validate_event
from cache.invalidation.listener import Listener, ReconnectingLoop, Target, Tracker
from cache.invalidation.log import NOTHING, Batch, InvalidationLog, LogState, LogUnavailable
from cache.invalidation.outbox import Relay, RelayLoop, write_outbox
from cache.invalidation.redis_log import RedisLog

__all__ = [
    "NOTHING",
    "Batch",
    "DatabaseLog",
    "Event",
    "InvalidationLog",
    "Listener",
    "LogState",
    "LogUnavailable",
    "ReconnectingLoop",
    "RedisLog",
    "Relay",
    "RelayLoop",
    "Target",
    "Tracker",
    "current_tracker",
    "decode_event",
    "id_key",
    "publish",
    "start_listener",
    "stop_listener",
    "validate_event",
    "wait_for",
]

_lock = threading.Lock()
_listener: Listener | None = None


def publish(
    table: str,
    keys: list | None = None,
    project: str | None = None,
    app_name: str | None = None,
    names: list[str] | None = None,
    *,
    log: InvalidationLog | None = None,
    session: Session | None = None,
    known_tables: KnownTables | None = None,
    max_keys: int = 10_000,
) -> str | None:
    """Validate an invalidation and put it in the log; returns its event id.

    With `session`, the event goes into the outbox in that session's transaction instead
    (it exists only if the caller commits; the worker's relay moves it to the log, and
    with `log` also given a relay pass runs right after the commit); returns None, as the
    id is only known once relayed. `known_tables` (names, or names -> key coercer) makes
    an unknown table an error and coerces keys to each table's primary-key type.
    """
    event = validate_event(
        table, keys, project, app_name, names, known_tables=known_tables, max_keys=max_keys
    )
    if session is not None:
        write_outbox(session, event, relay_log=log)
        return None
    if log is None:
        raise ConfigError("publish() needs log= (a RedisLog or DatabaseLog) or session=")
    return log.append(event.to_json())


def start_listener(
    target: Target,
    log: InvalidationLog,
    *,
    catch_up_log: InvalidationLog | None = None,
    tracker: Tracker | None = None,
    stale_after: float = 30.0,
    max_keys: int = 10_000,
    block: float = 0.5,
) -> Listener:
    """Start this process's listener thread for `target` (its cached-table registry).

    Call once per process, after any fork. `catch_up_log` (default `log`) is what
    `wait_for` and the task-start catch-up read through; pass `tracker` to share one
    that already exists for `target` (one tracker per target: it holds the lock)."""
    global _listener
    with _lock:
        if _listener is not None and _listener.alive:
            raise ConfigError("an invalidation listener already runs in this process")
        if tracker is None:
            tracker = Tracker(target, catch_up_log or log, max_keys=max_keys)
        _listener = Listener(tracker, log, stale_after=stale_after, block=block)
        _listener.start()
        return _listener


def stop_listener(timeout: float = 5.0) -> bool:
    """Stop this process's listener; True if it stopped (or none ran)."""
    global _listener
    with _lock:
        listener, _listener = _listener, None
    return listener.stop(timeout) if listener is not None else True


def current_tracker() -> Tracker | None:
    """The tracker of this process's running listener, if any."""
    listener = _listener
    return listener.tracker if listener is not None else None


def wait_for(event_id: str, timeout: float = 5.0, tracker: Tracker | None = None) -> None:
    """Read barrier: return once this process has applied `event_id` (TransientError
    after `timeout`), so reads that follow never see what that event invalidated."""
    tracker = tracker or current_tracker()
    if tracker is None:
        raise ConfigError("wait_for() needs a running listener (start_listener) or tracker=")
    tracker.wait_for(event_id, timeout)


def _forget_after_fork() -> None:
    """Threads do not survive fork: a child starts without a listener."""
    global _listener, _lock
    _listener = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
