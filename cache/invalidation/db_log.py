"""The invalidation log as a table in the app database (the embedded default).

Ids come from the table's sequence, but a sequence hands out ids at insert time, not at
commit: two concurrent writers could commit 6 before 5, and a reader that saw 6 would skip
5 for ever. So every append takes one transaction-scoped advisory lock on PostgreSQL
(SQLite serialises writers itself): ids then become visible in order. Readers poll.

Ids come from the table's own sequence only (the table refuses others), and a reader
notices a log recreated under it: on PostgreSQL the epoch carries the table's oid; on
SQLite a cursor beyond the table's AUTOINCREMENT counter (which never goes back) is a gap.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from cache.errors import CacheworkError
from cache.invalidation.events import id_key
from cache.invalidation.log import NOTHING, Batch, LogState, log_failure
from cache.invalidation.tables import invalidation_log

APPEND_LOCK = 0x63776976  # "cwiv": the advisory lock that orders appends on PostgreSQL
TRIM_EVERY = 100
EPOCH = "db"  # a table is not lost by a restart: one epoch per table's lifetime
_PG_OID = sa.text("SELECT 'invalidation_log'::regclass::oid")
_SQLITE_SEQ = sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'invalidation_log'")


def _epoch(conn: sa.Connection) -> str:
    """The table's lifetime: its oid on PostgreSQL (a recreated table has another)."""
    if conn.dialect.name == "postgresql":
        return f"{EPOCH}:{conn.execute(_PG_OID).scalar()}"
    return EPOCH


def _beyond_sequence(conn: sa.Connection, cursor: int) -> bool:
    """SQLite: a cursor past the highest id ever handed out belongs to an older table."""
    if conn.dialect.name != "sqlite" or not cursor:
        return False
    seq = conn.execute(_SQLITE_SEQ).scalar()
    return seq is None or cursor > seq


def _published(rows: list, exact: bool) -> dict[str, float]:
    """When the rows were appended, for the lag metric: PostgreSQL's `now()` has
    microseconds; SQLite's CURRENT_TIMESTAMP only whole seconds, too coarse to tell."""
    if not exact:
        return {}
    return {str(row.id): row.created_at.timestamp() for row in rows if row.created_at}


def _unavailable(exc: sa.exc.SQLAlchemyError) -> CacheworkError:
    return log_failure(exc, "invalidation log table")


class DatabaseLog:
    """`invalidation_log` on `engine`, trimmed to about `maxlen` rows, polled by readers."""

    def __init__(self, engine: sa.Engine, maxlen: int = 100_000, poll_interval: float = 0.05):
        self.engine = engine
        self.maxlen = maxlen
        self.poll_interval = poll_interval

    def append(self, data: str) -> str:
        try:
            with self.engine.begin() as conn:
                return self.append_in(conn, [data])[-1]
        except sa.exc.SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    def append_in(self, conn: sa.Connection, datas: list[str]) -> list[str]:
        """Append in the caller's transaction (the relay uses this: exactly once)."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(APPEND_LOCK)))
        ids = [
            conn.execute(
                invalidation_log.insert().values(data=data).returning(invalidation_log.c.id)
            ).scalar_one()
            for data in datas
        ]
        if any(i % TRIM_EVERY == 0 for i in ids):
            bound = ids[-1] - self.maxlen
            conn.execute(invalidation_log.delete().where(invalidation_log.c.id <= bound))
        return [str(i) for i in ids]

    def state(self) -> LogState:
        try:
            with self.engine.connect() as conn:
                head = conn.execute(sa.select(sa.func.max(invalidation_log.c.id))).scalar()
                epoch = _epoch(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
        return LogState(epoch, NOTHING if head is None else str(head))

    def read(self, after: str, count: int = 500) -> Batch:
        cursor = id_key(after)[0]
        query = sa.select(
            invalidation_log.c.id, invalidation_log.c.data, invalidation_log.c.created_at
        ).order_by(invalidation_log.c.id)
        if cursor == 0:
            query = query.where(invalidation_log.c.id > 0).limit(count)
        else:  # include the cursor's own row: if it is gone, rows after it may be too
            query = query.where(invalidation_log.c.id >= cursor).limit(count + 1)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                epoch = _epoch(conn)
                recreated = _beyond_sequence(conn, cursor)
        except sa.exc.SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
        gap = recreated
        if cursor:  # the cursor's row is gone (trimmed, table emptied): rows may be lost
            if rows and rows[0].id == cursor:
                rows = rows[1:]
            else:
                gap = True
        exact = self.engine.dialect.name == "postgresql"
        return Batch(epoch, gap, [(str(row.id), row.data) for row in rows], _published(rows, exact))

    def wait(self, after: str, timeout: float, stop: threading.Event) -> None:
        stop.wait(min(timeout, self.poll_interval))

    def close(self) -> None:
        """Nothing to release: the engine belongs to the caller."""

    def trim(self, maxlen: int) -> int:
        """Keep only the newest `maxlen` rows (tests, operators); returns rows removed."""
        try:
            with self.engine.begin() as conn:
                head = conn.execute(sa.select(sa.func.max(invalidation_log.c.id))).scalar() or 0
                result = conn.execute(
                    invalidation_log.delete().where(invalidation_log.c.id <= head - maxlen)
                )
                return result.rowcount
        except sa.exc.SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
