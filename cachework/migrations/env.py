"""Alembic environment of cachework's own tables.

Run through `cachework.migrate`, which hands in an open connection
(`config.attributes["connection"]`); only the tables on `cachework.schema.metadata` are
compared or touched, never the app's.
"""

from __future__ import annotations

from alembic import context

from cachework.migrate import VERSION_TABLE
from cachework.schema import own_metadata

metadata = own_metadata()


def _ours(obj, name, type_, _reflected, _compare_to) -> bool:
    if type_ == "table":
        return name in metadata.tables
    table = getattr(obj, "table", None)
    return table is None or table.name in metadata.tables


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=_ours,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("cachework's migrations run online only (cachework db upgrade)")
run_migrations_online()
