"""The outbox rows a tracked transaction writes as it commits: one per cached table.

On psycopg (3), sync or async, the INSERT travels with the COMMIT in one round trip, so
tracking adds no round trip to a transaction (asyncpg has no multi-statement query with
results: there it is a statement of its own). Only PostgreSQL and SQLite hold cachework's
outbox, so an engine of another database is refused before it writes anything
(`check_engine`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cachework.cache.invalidation.events import Event
from cachework.errors import ConfigError
from cachework.schema import invalidation_outbox

SUPPORTED = ("postgresql", "sqlite")  # where cachework's outbox lives


def check_engine(engine: Any) -> None:
    """Refuse an engine tracking cannot serve, before any write: its commit would have to
    write an outbox row there (and fail, costing the app its write)."""
    engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine: its sync facade
    dialect = getattr(engine, "dialect", None)
    if dialect is None or dialect.name not in SUPPORTED:
        raise ConfigError(
            f"track() cannot serve {getattr(dialect, 'name', engine)!r} "
            f"(driver {getattr(dialect, 'driver', None)!r}): the outbox lives in PostgreSQL "
            "or SQLite; use publish(..., log=...) after the commit instead"
        )


def write_rows(
    conn: sa.Connection, events: list[Event], *, then_commit: bool
) -> list[tuple[int, str]]:
    """Insert one outbox row per event on `conn`; (id, data) of each. `then_commit`: the
    transaction commits right after, so on psycopg the COMMIT goes with the INSERT."""
    datas = [e.to_json() for e in events]
    if then_commit and conn.dialect.driver == "psycopg":
        ids = _insert_then_commit(conn, datas)
    else:  # one statement per row: an executemany with RETURNING is not everywhere
        insert = invalidation_outbox.insert().returning(invalidation_outbox.c.id)
        ids = [conn.execute(insert, {"data": data}).scalar_one() for data in datas]
    return list(zip(ids, datas, strict=True))


def _insert_then_commit(conn: sa.Connection, rows: list[str]) -> list[int]:
    """psycopg (3), sync or async: send the outbox INSERT and the COMMIT as one simple
    query, one round trip instead of two; returns the rows' ids. The server commits; the driver's
    `commit()`, which SQLAlchemy calls next, finds the connection idle and sends nothing.
    If the INSERT fails, the COMMIT does not run: the commit fails and the transaction
    rolls back whole."""
    from psycopg import sql

    raw = conn.connection.dbapi_connection
    if conn.dialect.is_async:  # SQLAlchemy's adapter around the AsyncConnection
        raw = raw._connection
    table = conn.dialect.identifier_preparer.format_table(invalidation_outbox)
    values = ", ".join(f"({sql.Literal(row).as_string(raw)})" for row in rows)
    query = f"INSERT INTO {table} (data) VALUES {values} RETURNING id; COMMIT"
    result = conn.exec_driver_sql(query, execution_options={"no_parameters": True})
    return [row[0] for row in result]  # ('%' above is literal: no parameters)
