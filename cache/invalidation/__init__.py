"""Invalidation: every process that caches tables hears every invalidation, durably.

Events go into a durable, ordered log (a Redis Stream, or a table in the app database);
each process runs one listener thread that tails the log from its own cursor and marks
the named records invalid in its cached tables. Usable from any process, a web app
included: nothing here imports Celery or the worker.

    log = RedisLog(redis_client)                       # or DatabaseLog(engine)
    event_id = publish("categories", [3], log=log)     # after your change committed
    publish("categories", [3], session=s)              # or: in your own transaction
    track(SessionFactory, runtime)                     # or: every ORM write, by itself

A process's listener, tracker and relay belong to its runtime (`cachework.worker.runtime.Runtime`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cachework.cache.invalidation.db_log import DatabaseLog
from cachework.cache.invalidation.events import (
    Event,
    KnownTables,
    decode_event,
    id_key,
    validate_event,
)
from cachework.cache.invalidation.listener import Listener, ReconnectingLoop, Target, Tracker
from cachework.cache.invalidation.log import (
    NOTHING,
    Batch,
    InvalidationLog,
    LogError,
    LogState,
    LogUnavailable,
)
from cachework.cache.invalidation.outbox import Relay, RelayLoop, write_outbox
from cachework.cache.invalidation.redis_log import RedisLog
from cachework.cache.invalidation.tracking import Dependency, Tracking, track
from cachework.errors import ConfigError

__all__ = [
    "NOTHING",
    "Batch",
    "DatabaseLog",
    "Dependency",
    "Event",
    "InvalidationLog",
    "Listener",
    "LogError",
    "LogState",
    "LogUnavailable",
    "ReconnectingLoop",
    "RedisLog",
    "Relay",
    "RelayLoop",
    "Target",
    "Tracker",
    "Tracking",
    "decode_event",
    "id_key",
    "publish",
    "publish_event",
    "track",
    "validate_event",
]


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
    (it exists only if the caller commits). Once it commits, this process's started
    runtime invalidates it in its own cached tables before the commit returns, and the
    row is relayed by id to `log` (default: that runtime's log); the workers' relay is
    what guarantees delivery. Returns None, as the id is only known once relayed.
    `known_tables` (names, or names -> key coercer) makes an unknown table an error and
    coerces keys to each table's primary-key type.
    """
    event = validate_event(
        table, keys, project, app_name, names, known_tables=known_tables, max_keys=max_keys
    )
    return publish_event(event, log=log, session=session)


def publish_event(
    event: Event, *, log: InvalidationLog | None = None, session: Session | None = None
) -> str | None:
    """Put an event `validate_event` made in the log (or, with `session`, the outbox) as
    `publish` does, without checking it again."""
    if session is not None:
        write_outbox(session, event, relay_log=log)
        return None
    if log is None:
        raise ConfigError("publish() needs log= (a RedisLog or DatabaseLog) or session=")
    return log.append(event.to_json())
