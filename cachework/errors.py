"""The one exception tree of cachework.

Every error a task, the CLI or the library raises on purpose is a `CacheworkError`.
`TransientError` means "try again later" (tasks retry it with backoff); `PermanentError`
means the input or configuration is wrong and retrying cannot help. Messages name the bad
value and, where there is a short list, the valid ones.

Every class of the tree is defined HERE, so that it crosses the wire by type. A failed
task's result carries its exception as (module, class name, message), and a Celery client
rebuilds that class only if the module is already in its `sys.modules`; otherwise it
makes up a look-alike in `celery.exceptions` that no `except` of ours catches. So a plain
Celery client (a web app that imports none of cachework's tasks) does

    import cachework.errors  # the standard library only: no SQLAlchemy, Redis or Celery

    try:
        celery.send_task("cachework.lookup", kwargs=...).get(timeout=10)
    except cachework.errors.NotFoundError: ...
    except cachework.errors.PermanentError: ...  # bad input: do not resend as it is

Keep it that way: a new error class goes here (a module elsewhere imports it from here),
and this module imports nothing of cachework and nothing heavy at import time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

MESSAGE_MAX = 600  # characters of an error message: it goes to logs and result backends


def first_line(exc: BaseException, limit: int = 300, *, named: bool = True) -> str:
    """The first line of `exc`'s message, cut to `limit` (SQL dumps and tracebacks go to the
    log, not into an error or a health line), after its class name when `named`."""
    text = str(exc).strip()
    line = text.splitlines()[0][:limit] if text else ""
    if not named:
        return line
    return f"{exc.__class__.__name__}: {line}" if line else exc.__class__.__name__


def cut(text: str, limit: int = MESSAGE_MAX) -> str:
    """`text` if short enough, else its start and end around a note of what was left out
    (so a message still names the field and says what is wrong with it), `limit`
    characters at most, the note included."""
    if len(text) <= limit:
        return text
    room = limit - len(f"...({len(text)} characters cut)...")  # the note's longest form
    if room < 2:
        return text[:limit]
    tail = room // 4
    head = room - tail
    left_out = len(text) - head - tail
    return f"{text[:head]}...({left_out} characters cut)...{text[len(text) - tail :]}"


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to about `limit` characters: a bad value named in a message."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}...({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


class CacheworkError(Exception):
    """Root of every error cachework raises on purpose. Its message is cut to
    MESSAGE_MAX characters: a 10 MB bad argument is never repeated whole."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (cut(args[0]),)
        super().__init__(*args)


class TransientError(CacheworkError):
    """A temporary condition (lost connection, lock held, deadlock): retrying may succeed."""


class PermanentError(CacheworkError):
    """Retrying cannot help: bad input, bad configuration, a broken invariant."""


class ConfigError(PermanentError):
    """A setting is missing or malformed; the message names the variable and the value."""


class ValidationError(PermanentError):
    """A task argument or API input is malformed; the message names the field and value."""


class NotFoundError(PermanentError):
    """A named thing (model, project, app, table) does not exist; the message lists valid names."""


class ChangeLimitExceeded(PermanentError):
    """A version import would write more changes than `max_changes` allows; nothing was
    written. (Here with the other errors a task may raise: a client rebuilds a task's
    exception only from modules it has imported.)"""


class TooLargeError(ValidationError):
    """A task's argument, or its result, is over what a task accepts or stores (worker/
    task_base.py); the message names it and its size."""


class UnsupportedVersioning(ConfigError):
    """A model uses a Continuum feature the version import cannot reproduce exactly."""


class LogUnavailable(TransientError):
    """The invalidation log cannot be reached (connection lost, server restarting,
    database down)."""


class LogError(CacheworkError):
    """The invalidation log refused an operation for a reason no retry cures (its table
    missing, a Redis key of another type): not retried; a listener still treats it as a
    log it cannot read."""


class LockedError(TransientError):
    """Another job holds the lock this job needs."""


class LockLostError(TransientError):
    """A rebuild's lock expired before its commit (a stall longer than the lock's TTL);
    nothing was written, the names are dirty again for whoever holds the lock now."""


def is_transient(exc: BaseException) -> bool:
    """True for database and Redis conditions a retry can cure: lost or refused
    connections, timeouts, deadlocks, serialization failures, "database is locked".

    They reach SQLAlchemy as `OperationalError` (or a DBAPIError whose connection was
    invalidated) and redis-py as `ConnectionError`/`TimeoutError`, `OutOfMemoryError`
    from a Redis full under `noeviction` (refused, not evicted), or `ReadOnlyError` from a
    master demoted to a replica by a failover (a proxy in front of Redis still sends
    there until it switches; a sentinel:// client reconnects) or its NOREPLICAS under
    `min-replicas-to-write`; constraint violations,
    SQL errors and Redis command errors are not transient: retrying cannot fix them.
    SQLite raises OperationalError for both kinds; only its locked, busy and I/O errors
    are transient ("no such table" is not)."""
    import sqlite3

    import redis
    import sqlalchemy as sa

    if isinstance(
        exc,
        redis.ConnectionError
        | redis.TimeoutError
        | redis.OutOfMemoryError
        | redis.exceptions.ReadOnlyError,
    ):
        # Neither OOM (memory frees up) nor READONLY (a failover ends) wrote anything.
        return True
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("NOREPLICAS"):
        return True  # an old master under min-replicas-to-write, refusing: as READONLY
    if isinstance(exc, sa.exc.OperationalError):
        if isinstance(exc.orig, sqlite3.OperationalError):
            return any(word in str(exc.orig).lower() for word in SQLITE_TRANSIENT)
        return True
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


SQLITE_TRANSIENT = ("locked", "busy", "disk i/o")


@contextmanager
def transient_errors(what: str = "database or Redis") -> Iterator[None]:
    """Raise what `is_transient` recognises as `TransientError` (naming `what` and the
    cause's first line, never a SQL dump); everything else passes unchanged."""
    try:
        yield
    except Exception as exc:
        if not is_transient(exc):
            raise
        cause = getattr(exc, "orig", None) or exc
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        raise TransientError(
            f"{what} unavailable, worth retrying: {type(cause).__name__}: {first}"
        ) from exc
