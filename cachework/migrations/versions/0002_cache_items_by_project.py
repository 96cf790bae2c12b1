"""cache_items: an index led by the project.

A project's items (`store.get_project_items`, ordered by app and name), a project's
delete and the list of projects with items filtered on `project` with no index that
starts with it (the unique key starts with `coalesce(project, '')`), so each scanned the
whole table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-10-01
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_cache_items_project", "cache_items", ["project", "app_name", "name"])


def downgrade() -> None:
    op.drop_index("ix_cache_items_project", table_name="cache_items")
