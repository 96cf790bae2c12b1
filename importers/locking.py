"""One import at a time per database, and one snapshot per import.

PostgreSQL: a transaction-level advisory lock taken in a side transaction BEFORE the
import's own transaction takes its snapshot; the side transaction stays open (idle, no
snapshot held) until the import's transaction has ended, and its end releases the lock, so
the next import always sees everything the previous one committed. The import's
transaction runs at REPEATABLE READ, so every statement of the run sees the same snapshot.
Taking the lock inside the import's transaction instead would leave a window where the
snapshot is older than the lock. A session-level lock would outlive its transaction on a
pooled server connection (PgBouncer in transaction mode hands that connection to another
client, who would then hold the lock too, while the unlock runs elsewhere): the side
transaction keeps its server connection until it ends, in every pooling mode.

SQLite: `BEGIN IMMEDIATE` takes the database's write lock before the first read, which
both serialises imports (a second one waits for the busy timeout, then gets `LockedError`)
and gives the run one snapshot (pysqlite would otherwise run the reads outside any
transaction).
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from cachework.errors import LockedError, ValidationError

LOCK_NAME = "cachework.import_versions"
# A stable signed 64-bit key for pg_try_advisory_xact_lock, derived from the lock's name.
LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)
_TRY_LOCK = sa.text(
    "SELECT pg_try_advisory_xact_lock(:k) "
    "FROM (SELECT set_config('idle_in_transaction_session_timeout', '0', true)) AS s"
)


def begin_import(session: Session, mapper: type | None = None, lock_key: int = LOCK_KEY) -> None:
    """Start `session`'s transaction for an import: lock first, then one snapshot.

    The session must not have begun a transaction yet (its isolation level and the lock
    must come before its first statement). Raises `LockedError` when another import holds
    the lock.
    """
    if session.in_transaction():
        raise ValidationError(
            "the version import needs a session that has not begun a transaction yet "
            "(it takes the import lock and its snapshot first); pass a fresh session"
        )
    bind = session.get_bind(mapper=mapper)
    where = {"mapper": mapper} if mapper is not None else None
    dialect = bind.dialect.name
    if dialect == "postgresql":
        _lock_postgresql(session, bind, lock_key)
        session.connection(
            bind_arguments=where, execution_options={"isolation_level": "REPEATABLE READ"}
        )
    elif dialect == "sqlite":
        connection = session.connection(bind_arguments=where)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.OperationalError as exc:
            if "locked" in str(exc.orig).lower():
                raise LockedError(
                    "another writer (perhaps another version import) holds this SQLite "
                    "database's write lock; try again later"
                ) from None
            raise
    else:
        raise ValidationError(
            f"version imports support postgresql and sqlite, not {dialect!r} databases"
        )


def _engine_of(bind: sa.Engine | sa.Connection) -> sa.Engine:
    return bind.engine if isinstance(bind, sa.Connection) else bind


def _lock_postgresql(session: Session, bind: sa.Engine | sa.Connection, key: int) -> None:
    # Its transaction holds the lock; READ COMMITTED keeps no snapshot while it waits, and
    # a server's idle_in_transaction_session_timeout must not end it (and the lock) early:
    # set_config(..., true) is SET LOCAL, gone with the transaction.
    side = _engine_of(bind).connect().execution_options(isolation_level="READ COMMITTED")
    try:
        got = side.execute(_TRY_LOCK, {"k": key}).scalar_one()
    except BaseException:
        side.close()
        raise
    if not got:
        side.close()
        raise LockedError(
            f"another version import is running against this database (advisory lock "
            f"{LOCK_NAME!r}, key {key}); try again when it has finished"
        )

    held = [True]

    def release(_session: Session, transaction: SessionTransaction) -> None:
        # Listeners cannot be removed while they are being dispatched: this one stays
        # registered and does nothing after the first outermost transaction end.
        if transaction.parent is not None or not held[0]:
            return
        held[0] = False
        try:
            side.rollback()  # the side transaction's end releases the lock
        except sa.exc.DBAPIError:
            side.invalidate()  # a broken connection never goes back to the pool locked
        finally:
            side.close()

    event.listen(session, "after_transaction_end", release)
