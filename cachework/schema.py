"""cachework's own tables, all on one MetaData: the project cache items, the rebuild locks,
dirty names and fences of the database lock backend, the invalidation log and the outbox.

They live here, among the foundations, because the migrations (`cachework.migrate`) and
every cache module need them; the app's own tables are never here.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData()
NAME_MAX = 255  # project keys, app and item names, users: PostgreSQL-safe bounded text


def own_metadata() -> sa.MetaData:
    """`metadata`, which holds every table of ours (they are all defined below)."""
    return metadata


# --- project cache items ----------------------------------------------------------------


class UTCDateTime(sa.TypeDecorator):
    """A timezone-aware UTC datetime on every dialect (SQLite drops the zone otherwise)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: cache item times are UTC-aware")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


cache_items = sa.Table(
    "cache_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # The project's canonical key (cachework.cache.items.projects): a uuid, an integer or a text
    # key.
    sa.Column("project", sa.String(NAME_MAX), nullable=True),
    sa.Column("app_name", sa.String(NAME_MAX), nullable=False),
    sa.Column("name", sa.String(NAME_MAX), nullable=False),
    sa.Column("data_type", sa.String(16), nullable=False, default="json"),
    sa.Column("data", sa.JSON(none_as_null=True), nullable=False),
    sa.Column("user", sa.String(NAME_MAX), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)
# One key for project and site-wide items: NULL is never equal to NULL in a unique index,
# so the project goes through COALESCE; '' is not a valid project key, so no collision.
cache_items_key = (
    sa.func.coalesce(cache_items.c.project, sa.literal_column("''")),
    cache_items.c.app_name,
    cache_items.c.name,
)
sa.Index("uq_cache_items_key", *cache_items_key, unique=True)
sa.Index("ix_cache_items_app", cache_items.c.app_name, cache_items.c.name)
# A project's items, its deletes and the projects with items (migration 0002).
sa.Index(
    "ix_cache_items_project", cache_items.c.project, cache_items.c.app_name, cache_items.c.name
)


# --- rebuild locks of the database backend -----------------------------------------------

cache_locks = sa.Table(
    "cache_locks",
    metadata,
    sa.Column("key", sa.String(600), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("expires_ms", sa.BigInteger, nullable=True),
)
cache_dirty = sa.Table(
    "cache_dirty",
    metadata,
    sa.Column("key", sa.String(600), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
)
# Names a holder took and has not finished (committed) yet: the next holder redoes them.
cache_taken = sa.Table(
    "cache_taken",
    metadata,
    sa.Column("key", sa.String(600), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
)


# The fencing token last claimed per scope (`claim_fence`, `hold_fence`; migration 0004).
cache_fences = sa.Table(
    "cache_fences",
    metadata,
    sa.Column("key", sa.String(600), primary_key=True),
    sa.Column("token", sa.BigInteger, nullable=False),
)


# --- data-driven rebuilds (cachework.cache.items.changes; migration 0006) -------------------

# One row per (project, app, item) a committed change has touched: when the last change
# was seen, when a rebuild is due (NULL: none pending), when one was sent, and when the
# last one that covered it started. Times are the database's clock in epoch milliseconds.
# `project` '' is the site-wide scope ('' is never a project key); `name` '*' is every
# item of the app.
cache_changes = sa.Table(
    "cache_changes",
    metadata,
    sa.Column("project", sa.String(NAME_MAX), primary_key=True),
    sa.Column("app_name", sa.String(NAME_MAX), primary_key=True),
    sa.Column("name", sa.String(NAME_MAX), primary_key=True),
    sa.Column("changed_ms", sa.BigInteger, nullable=False),
    sa.Column("due_ms", sa.BigInteger, nullable=True),
    sa.Column("sent_ms", sa.BigInteger, nullable=True),
    sa.Column("built_ms", sa.BigInteger, nullable=True),
)
sa.Index("ix_cache_changes_due", cache_changes.c.due_ms)
# Where the change follower is in the invalidation log (one row per log: `name`), and the
# log's epoch then; moved in the same transaction as the marks it made.
cache_change_cursor = sa.Table(
    "cache_change_cursor",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("cursor", sa.String(64), nullable=False),
    sa.Column("epoch", sa.String(255), nullable=True),
)


# --- invalidation log and outbox ---------------------------------------------------------

# BIGINT on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the auto-incrementing rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Ids come from the log's own sequence only: a row with an id of its choosing (a high one)
# would put every reader's cursor past all later events. PostgreSQL refuses explicit ids
# (GENERATED ALWAYS); on SQLite the triggers below do.
invalidation_log = sa.Table(
    "invalidation_log",
    metadata,
    sa.Column("id", BigId, sa.Identity(always=True), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("data", sa.Text, nullable=False),
    sqlite_autoincrement=True,  # never reuse an id, even after trimming the newest rows
)

# SQLite's triggers that refuse explicit ids, by name: made with the table, and added to a
# log made before them by migration 0003.
SQLITE_TRIGGERS: dict[str, str] = {
    # In a BEFORE INSERT trigger NEW.id is -1 when SQLite chooses the id.
    "invalidation_log_own_ids": (
        "CREATE TRIGGER invalidation_log_own_ids BEFORE INSERT ON invalidation_log "
        "WHEN NEW.id IS NOT NULL AND NEW.id <> -1 BEGIN "
        "SELECT RAISE(ABORT, 'invalidation_log ids come from its own sequence only'); END"
    ),
    "invalidation_log_positive_ids": (
        "CREATE TRIGGER invalidation_log_positive_ids AFTER INSERT ON invalidation_log "
        "WHEN NEW.id <= 0 BEGIN "
        "SELECT RAISE(ABORT, 'invalidation_log ids come from its own sequence only'); END"
    ),
}
for _trigger in SQLITE_TRIGGERS.values():
    sa.event.listen(invalidation_log, "after_create", sa.DDL(_trigger).execute_if(dialect="sqlite"))


# An id its sequence did not hand out is refused (issue 18, item 6): on PostgreSQL an INSERT
# with OVERRIDING SYSTEM VALUE, and COPY, take explicit ids past GENERATED ALWAYS; on
# SQLite an UPDATE could move an id. By name: made with the table, added to an older log
# by migration 0005. The PostgreSQL function runs as its owner (who owns the sequence), so
# any role that may insert is checked; a role's triggers off (session_replication_role =
# replica) skip it, and readers then still never follow such an id (`db_log`).
PG_HANDED_OUT: dict[str, str] = {
    "invalidation_log_handed_out": (
        "CREATE OR REPLACE FUNCTION invalidation_log_handed_out() RETURNS trigger "
        "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ "
        "DECLARE seq regclass := pg_get_serial_sequence("
        "format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'id')::regclass; bound bigint; "
        "BEGIN IF seq IS NOT NULL THEN "
        "bound := coalesce(pg_sequence_last_value(seq), "
        "(SELECT seqstart - seqincrement FROM pg_sequence WHERE seqrelid = seq)); "
        "IF NEW.id > bound THEN RAISE EXCEPTION "
        "'invalidation_log id=% was not handed out by its sequence (at %): ids come from "
        "it only', NEW.id, bound USING ERRCODE = 'check_violation'; END IF; END IF; "
        "RETURN NEW; END $$"
    ),
    "invalidation_log_handed_out_ids": (
        "CREATE TRIGGER invalidation_log_handed_out_ids BEFORE INSERT ON invalidation_log "
        "FOR EACH ROW EXECUTE FUNCTION invalidation_log_handed_out()"
    ),
}
SQLITE_FIXED_IDS: dict[str, str] = {
    "invalidation_log_fixed_ids": (
        "CREATE TRIGGER invalidation_log_fixed_ids BEFORE UPDATE ON invalidation_log "
        "WHEN NEW.id IS NOT OLD.id BEGIN "
        "SELECT RAISE(ABORT, 'invalidation_log ids come from its own sequence only'); END"
    ),
}


def ddl(statement: str) -> sa.DDL:
    """`statement` as DDL to execute (DDL formats `%`: the function's text has some)."""
    return sa.DDL(statement.replace("%", "%%"))


for _ddl in PG_HANDED_OUT.values():
    sa.event.listen(invalidation_log, "after_create", ddl(_ddl).execute_if(dialect="postgresql"))
for _ddl in SQLITE_FIXED_IDS.values():
    sa.event.listen(invalidation_log, "after_create", ddl(_ddl).execute_if(dialect="sqlite"))


@sa.event.listens_for(invalidation_log, "after_create")
def _sqlite_random_base(_table, connection: sa.Connection, **_kw) -> None:
    """SQLite: start the ids at a random multiple of 2**32, so a log recreated under a
    running reader never hands out the ids it followed (the reader sees a gap); on
    PostgreSQL the table's oid tells (see `db_log`)."""
    if connection.dialect.name == "sqlite":
        connection.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('invalidation_log', :seq)"),
            {"seq": secrets.randbelow(2**20) * 2**32},
        )


invalidation_outbox = sa.Table(
    "invalidation_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("data", sa.Text, nullable=False),
    sqlite_autoincrement=True,
)
