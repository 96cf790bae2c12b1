"""Invalidation from an asyncio app: `publish` into an `AsyncSession`'s outbox or
straight into the log, and the read barrier, awaited.

The event is checked on the loop by the same `validate_event` the sync `publish` uses;
the outbox row is written through the session's own connection (`run_sync`), so it exists
if and only if the caller's transaction commits, and once it commits this process's
started runtime invalidates it before `commit()` returns, as for a sync session. A
direct log append and the barrier's wait are blocking calls, made in a thread.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol

from cachework.cache.aio.threads import off_loop, pool_of
from cachework.cache.invalidation import publish_event as publish_now
from cachework.cache.invalidation.events import Event, KnownTables, validate_event
from cachework.cache.invalidation.log import InvalidationLog
from cachework.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


class Barrier(Protocol):
    """A started runtime (`cachework.worker.runtime.Runtime`)."""

    def wait_for(self, event_id: str, timeout: float = 5.0) -> None: ...


async def publish(
    table: str,
    keys: list | None = None,
    project: str | None = None,
    app_name: str | None = None,
    names: list[str] | None = None,
    *,
    log: InvalidationLog | None = None,
    session: AsyncSession | None = None,
    known_tables: KnownTables | None = None,
    max_keys: int = 10_000,
) -> str | None:
    """`cachework.cache.invalidation.publish`, awaited: with `session` (an AsyncSession) into its
    transaction's outbox (returns None), else appended to `log` (returns the event id)."""
    event = validate_event(
        table, keys, project, app_name, names, known_tables=known_tables, max_keys=max_keys
    )
    return await publish_event(event, log=log, session=session)


async def publish_event(
    event: Event, *, log: InvalidationLog | None = None, session: AsyncSession | None = None
) -> str | None:
    """Put an event `validate_event` made in the outbox or the log, as `publish` does."""
    if session is not None:
        if not callable(getattr(session, "run_sync", None)):
            raise ConfigError(
                f"cachework.cache.aio.publish needs an AsyncSession, not {session!r} "
                "(with a Session, call cachework.cache.invalidation.publish)"
            )
        return await session.run_sync(_into_outbox, event, log)
    if log is None:
        raise ConfigError("publish() needs log= (a RedisLog or DatabaseLog) or session=")
    return await off_loop(None, functools.partial(publish_now, log=log), event)


def _into_outbox(sync_session: Any, event: Event, log: InvalidationLog | None) -> None:
    publish_now(event, log=log, session=sync_session)


async def wait_for(runtime: Barrier, event_id: str, timeout: float = 5.0) -> None:
    """Read barrier: return once `runtime`'s process has applied `event_id` (a
    TransientError naming it after `timeout` seconds); the loop goes on meanwhile."""
    await off_loop(pool_of(runtime), runtime.wait_for, event_id, timeout)
