"""cache_fences: the fencing token of each project-cache scope's rebuild lock.

A rebuild holder paused past its lock's TTL (SIGSTOP, swap) used to wake up and write
items computed from old data over those of the holder that took the lock after it (issue
18, defect 2). Now every holder claims a token from this table right after taking the
lock (one more than the last, per scope), and its item write checks in the same
transaction that the token is still the newest (`cachework.cache.items.locks.claim_fence`,
`hold_fence`).
One row per scope key, as in `cache_locks`; the table starts empty (a missing row is
made by the first claim).

A database whose tables were made by `create_all` of a later code (the table is there
already) is left as it is.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "cache_fences"


def upgrade() -> None:
    if TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        TABLE,
        sa.Column("key", sa.String(600), primary_key=True),
        sa.Column("token", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
