"""Baseline: cachework's own tables as cachework 0.1 created them (before migrations).

A database whose tables were made by `cachework initdb` before migrations existed has no
`cachework_alembic_version`: `cachework.migrate.upgrade` stamps it at this revision, then
upgrades. Frozen: later changes go in new revisions, never here.

Revision ID: 0001
Revises:
Create Date: 2026-10-01
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SQLITE_TRIGGERS = (
    "CREATE TRIGGER invalidation_log_own_ids BEFORE INSERT ON invalidation_log "
    "WHEN NEW.id IS NOT NULL AND NEW.id <> -1 BEGIN "
    "SELECT RAISE(ABORT, 'invalidation_log ids come from its own sequence only'); END",
    "CREATE TRIGGER invalidation_log_positive_ids AFTER INSERT ON invalidation_log "
    "WHEN NEW.id <= 0 BEGIN "
    "SELECT RAISE(ABORT, 'invalidation_log ids come from its own sequence only'); END",
)


def upgrade() -> None:
    op.create_table(
        "cache_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("app_name", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("data_type", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("user", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "uq_cache_items_key",
        "cache_items",
        [sa.text("coalesce(project, '')"), "app_name", "name"],
        unique=True,
    )
    op.create_index("ix_cache_items_app", "cache_items", ["app_name", "name"])
    op.create_table(
        "cache_locks",
        sa.Column("key", sa.String(600), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("expires_ms", sa.BigInteger, nullable=True),
    )
    for name in ("cache_dirty", "cache_taken"):
        op.create_table(
            name,
            sa.Column("key", sa.String(600), primary_key=True),
            sa.Column("name", sa.String(255), primary_key=True),
        )
    op.create_table(
        "invalidation_log",
        sa.Column("id", BigId, sa.Identity(always=True), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("data", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "invalidation_outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("data", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    if op.get_bind().dialect.name == "sqlite":
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
        op.get_bind().execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('invalidation_log', :seq)"),
            {"seq": secrets.randbelow(2**20) * 2**32},
        )


def downgrade() -> None:
    for name in (
        "invalidation_outbox",
        "invalidation_log",
        "cache_taken",
        "cache_dirty",
        "cache_locks",
        "cache_items",
    ):
        op.drop_table(name)
