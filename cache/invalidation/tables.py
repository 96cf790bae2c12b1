"""cachework's own tables for invalidation: the database-backed log and the outbox.

The log is the embedded default when Redis is off. The outbox holds events written in a
caller's own transaction (`publish(..., session=s)`) until the worker's relay moves them
to the log, so an event exists if and only if the data change committed.
"""

from __future__ import annotations

import sqlalchemy as sa

from cache.schema import metadata

# BIGINT on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the auto-incrementing rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

invalidation_log = sa.Table(
    "invalidation_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("data", sa.Text, nullable=False),
    sqlite_autoincrement=True,  # never reuse an id, even after trimming the newest rows
)

invalidation_outbox = sa.Table(
    "invalidation_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("data", sa.Text, nullable=False),
    sqlite_autoincrement=True,
)
