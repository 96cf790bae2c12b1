"""cache_changes and cache_change_cursor: data-driven rebuilds of project cache items.

A committed change to a table a plugin's item reads (issue 23) is marked here by the
change follower (`cachework.cache.items.changes`): one row per (project, app, item) with
the time of its last change and when its rebuild is due, sent and last built; the
follower's place in the invalidation log moves in the same transaction as its marks.

A database whose tables were made by `create_all` of a later code is left as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "cache_changes" not in present:
        op.create_table(
            "cache_changes",
            sa.Column("project", sa.String(255), primary_key=True),
            sa.Column("app_name", sa.String(255), primary_key=True),
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("changed_ms", sa.BigInteger, nullable=False),
            sa.Column("due_ms", sa.BigInteger, nullable=True),
            sa.Column("sent_ms", sa.BigInteger, nullable=True),
            sa.Column("built_ms", sa.BigInteger, nullable=True),
        )
        op.create_index("ix_cache_changes_due", "cache_changes", ["due_ms"])
    if "cache_change_cursor" not in present:
        op.create_table(
            "cache_change_cursor",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("cursor", sa.String(64), nullable=False),
            sa.Column("epoch", sa.String(255), nullable=True),
        )


def downgrade() -> None:
    op.drop_table("cache_change_cursor")
    op.drop_index("ix_cache_changes_due", "cache_changes")
    op.drop_table("cache_changes")
