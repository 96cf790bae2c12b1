"""The invalidation log as a table in the app database (the embedded default).

Ids come from the table's sequence, but a sequence hands out ids at insert time, not at
commit: two concurrent writers could commit 6 before 5, and a reader that saw 6 would skip
5 for ever. So every append takes one transaction-scoped advisory lock on PostgreSQL
(SQLite serialises writers itself): ids then become visible in order. Readers poll:
every 50 ms while rows arrive, every second when idle (`DatabaseLog.wait`).

Ids come from the table's own sequence only (the table refuses others), and a reader
notices a log recreated under it: on PostgreSQL the epoch carries the table's oid; on
SQLite a cursor beyond the table's AUTOINCREMENT counter (which never goes back) is a gap.

The refusal is the table's triggers (`cachework.schema`), which do not run in
replica mode (restores, logical-replication subscribers), and a row with a high id of its
own choosing would put every reader's cursor past all later events (issue 18, item 6).
So a reader trusts no id its sequence has not handed out, where it may read the sequence:
it reads the sequence's highest value after the rows (so that value covers every row the
read saw) and hands the rows above it back as `Batch.foreign`, which the tracker applies
once as unknown entries and never follows; the head is the highest id at or below it.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from cachework.cache.invalidation.events import id_key
from cachework.cache.invalidation.log import NOTHING, Batch, LogState, log_failure
from cachework.errors import CacheworkError
from cachework.schema import invalidation_log

APPEND_LOCK = 0x63776976  # "cwiv": the advisory lock that orders appends on PostgreSQL
TRIM_EVERY = 100
EPOCH = "db"  # a table is not lost by a restart: one epoch per table's lifetime
MAX_ID = 2**63 - 1
# The highest id the log's sequence has handed out, or NULL where ids cannot be checked
# (no sequence, or this role may not read it: then ids are trusted as before).
# PostgreSQL: the identity sequence's last value (a sequence never called yet has handed
# out nothing below its start); SQLite: the AUTOINCREMENT counter (NULL: no row yet).
_PG_BOUND = (
    "SELECT CASE WHEN s.seq IS NULL OR NOT has_sequence_privilege(s.seq, 'SELECT, USAGE') "
    "THEN NULL ELSE coalesce(pg_sequence_last_value(s.seq), "
    "(SELECT p.seqstart - p.seqincrement FROM pg_sequence p WHERE p.seqrelid = s.seq)) END "
    "AS bound FROM (SELECT pg_get_serial_sequence('invalidation_log', 'id')::regclass AS seq) s"
)
_SQLITE_BOUND = "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'invalidation_log') AS bound"
_OID = "'invalidation_log'::regclass::oid AS oid"
# Epoch and bound, read after the rows in a statement of its own.
_PG_AFTER = sa.text(f"SELECT {_OID}, b.bound FROM ({_PG_BOUND}) b")
# The head in one statement: the highest id at or below the bound; the bound is read
# after the statement's snapshot was taken, so it covers every row the statement sees.
_HEAD = "(SELECT max(id) FROM invalidation_log WHERE id <= coalesce(b.bound, :max_id)) AS head"
_PG_STATE = sa.text(f"SELECT {_OID}, b.bound, {_HEAD} FROM ({_PG_BOUND}) b")
_SQLITE_STATE = sa.text(f"SELECT NULL AS oid, b.bound, {_HEAD} FROM ({_SQLITE_BOUND}) b")
_PG_STATE, _SQLITE_STATE = (q.bindparams(max_id=MAX_ID) for q in (_PG_STATE, _SQLITE_STATE))


def _epoch(conn: sa.Connection, oid: object) -> str:
    """The table's lifetime: its oid on PostgreSQL (a recreated table has another)."""
    return f"{EPOCH}:{oid}" if conn.dialect.name == "postgresql" else EPOCH


def _after_rows(conn: sa.Connection) -> tuple[str, int | None]:
    """Epoch and sequence bound, read after the rows."""
    if conn.dialect.name == "postgresql":
        row = conn.execute(_PG_AFTER).one()
        return _epoch(conn, row.oid), row.bound
    return EPOCH, conn.execute(sa.text(_SQLITE_BOUND)).scalar()


def _beyond_sequence(dialect: str, cursor: int, bound: int | None) -> bool:
    """A cursor past the highest id ever handed out belongs to an older table (SQLite: a
    log recreated under it) or a sequence set back: events after it would be missed."""
    if not cursor:
        return False
    if bound is None:  # SQLite: no id handed out yet; PostgreSQL: ids cannot be checked
        return dialect == "sqlite"
    return cursor > bound


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

    def __init__(
        self,
        engine: sa.Engine,
        maxlen: int = 100_000,
        poll_interval: float = 0.05,
        idle_interval: float = 1.0,
        busy_for: float = 2.0,
    ):
        self.engine = engine
        self.maxlen = maxlen
        self.poll_interval = poll_interval
        # A listener polls every `poll_interval` for `busy_for` seconds after a read that
        # found rows, then every `idle_interval`: an idle process costs one read a second,
        # not 20 (a task start still reads the log itself; a commit applies its own rows).
        self.idle_interval = max(idle_interval, poll_interval)
        self.busy_for = busy_for
        self._rows_at = time.monotonic()  # when a read last found rows (start: busy)

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
                pg = conn.dialect.name == "postgresql"
                row = conn.execute(_PG_STATE if pg else _SQLITE_STATE).one()
                epoch = _epoch(conn, row.oid)
        except sa.exc.SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
        return LogState(epoch, NOTHING if row.head is None else str(row.head))

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
                epoch, bound = _after_rows(conn)  # after the rows: it covers all they hold
        except sa.exc.SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
        if len(rows) > (1 if cursor else 0):
            self._rows_at = time.monotonic()
        dialect = self.engine.dialect.name
        gap = _beyond_sequence(dialect, cursor, bound)
        foreign = [] if bound is None else [row for row in rows if row.id > bound]
        rows = rows[: len(rows) - len(foreign)]  # ids above the bound sort last
        if cursor:  # the cursor's row is gone (trimmed, table emptied): rows may be lost
            if rows and rows[0].id == cursor:
                rows = rows[1:]
            else:
                gap = True
        return Batch(
            epoch,
            gap,
            [(str(row.id), row.data) for row in rows],
            _published(rows, dialect == "postgresql"),
            [(str(row.id), row.data) for row in foreign],
        )

    def wait(self, after: str, timeout: float, stop: threading.Event) -> None:
        busy = time.monotonic() - self._rows_at < self.busy_for
        stop.wait(min(timeout, self.poll_interval if busy else self.idle_interval))

    def close(self) -> None:
        """Nothing to release: the engine belongs to the caller."""

    def trim(self, maxlen: int) -> int:
        """Keep only the newest `maxlen` rows (tests, operators); returns rows removed."""
        try:
            with self.engine.begin() as conn:
                pg = conn.dialect.name == "postgresql"
                head = conn.execute(_PG_STATE if pg else _SQLITE_STATE).one().head or 0
                result = conn.execute(
                    invalidation_log.delete().where(invalidation_log.c.id <= head - maxlen)
                )
                return result.rowcount
        except sa.exc.SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
