"""The invalidation log: one interface, two implementations (Redis Stream, database table).

The log is durable and ordered; every entry gets an id that grows. Readers never consume
entries (no consumer groups): each process tails the log from its own cursor, so every
process sees every entry, and one that was away catches up. What a reader cannot see by
itself is that entries it never read are gone; `Batch.gap` and `LogState.epoch` tell it:

- `gap`: the entry at the reader's cursor is no longer in the log (it was trimmed), so
  entries after it may have been trimmed unread too;
- `epoch`: an id of the log's lifetime; a restarted Redis is a new epoch (without
  persistence it starts a new stream; with it, it may have lost the newest entries), so a
  reader holding the old epoch knows it may have lost entries.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from cachework.errors import (  # the log's errors live with every other cachework error
    CacheworkError,
    LogError,
    LogUnavailable,
    first_line,
    is_transient,
)

NOTHING = "0"  # the cursor of a reader that has seen nothing yet / head of an empty log
# Seconds a listener blocks on one read of a log that can block (Redis: XREAD BLOCK): an
# idle process costs one cheap call per LISTEN_BLOCK; a connection's read timeout must
# exceed it (see RedisLog.for_listener).
LISTEN_BLOCK = 5.0


def log_failure(exc: Exception, what: str) -> CacheworkError:
    """The database or Redis error `exc` met reaching `what`, as LogUnavailable when
    `is_transient` says a retry can cure it, else LogError (first line of the cause)."""
    if is_transient(exc):
        return LogUnavailable(f"{what} unreachable: {first_line(exc)}")
    return LogError(f"{what} failed: {first_line(exc)}")


@dataclass(frozen=True)
class LogState:
    """What one cheap call tells about the log: its epoch and the id of its newest entry."""

    epoch: str | None
    head: str


@dataclass(frozen=True)
class Batch:
    """Entries after a cursor, read atomically with the checks that make skipping visible."""

    epoch: str | None
    gap: bool
    entries: list[tuple[str, object]] = field(default_factory=list)  # (id, raw payload)
    # When entries whose id carries no time were appended (Unix seconds, by id); a Redis
    # Stream id is its own time (`cachework.worker.metrics.publish_time`).
    published: dict[str, float] = field(default_factory=dict)
    # Entries whose id the log never handed out (the database log: above its sequence,
    # inserted with an id of their own): applied once as unknown, never a cursor.
    foreign: list[tuple[str, object]] = field(default_factory=list)


class InvalidationLog(Protocol):
    """A durable, ordered log of JSON events. Errors reaching it raise LogUnavailable."""

    def append(self, data: str) -> str:
        """Store one event (JSON text); returns its id."""
        ...

    def state(self) -> LogState:
        """Epoch and head id, in one round trip (task-start catch-up calls this)."""
        ...

    def read(self, after: str, count: int = 500) -> Batch:
        """Up to `count` entries with ids after `after`, oldest first, plus gap/epoch."""
        ...

    def wait(self, after: str, timeout: float, stop: threading.Event) -> None:
        """Block until an entry after `after` may exist, `timeout` passes, or `stop` is set."""
        ...

    def close(self) -> None:
        """Release connections (the log can be used again; it reconnects)."""
        ...
