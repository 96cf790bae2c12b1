"""Alembic migrations of cachework's own tables (`cachework.schema.metadata`), never the app's.

The scripts ship in `cachework/migrations/`; the revision is kept in `cachework_alembic_version`
so an app's own Alembic set-up keeps `alembic_version` to itself. `upgrade(engine)` creates
our tables at head on a database that has none of them, adopts a database made before
migrations existed (stamped at the baseline, then upgraded) and upgrades anything older;
`check_schema(engine)` is what start-up calls: a ConfigError naming the command to run
when the schema is behind.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from cachework.errors import ConfigError
from cachework.schema import own_metadata

VERSION_TABLE = "cachework_alembic_version"
BASELINE = "0001"
UPGRADE_COMMAND = "cachework db upgrade"
INIT_COMMAND = "cachework initdb"
SCRIPTS = Path(__file__).with_name("migrations")


def config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    return script().get_current_head()


@dataclass(frozen=True)
class SchemaState:
    """Where a database's own tables stand: `revision` None means unversioned."""

    revision: str | None
    head: str
    tables: frozenset[str]  # which of our tables exist

    @property
    def fresh(self) -> bool:
        return self.revision is None and not self.tables

    @property
    def current(self) -> bool:
        return self.revision == self.head

    @property
    def known(self) -> bool:
        return self.revision is None or self.revision in {r.revision for r in _revisions()}


def _revisions() -> list:
    return list(script().walk_revisions())


def state(engine: sa.Engine) -> SchemaState:
    ours = set(own_metadata().tables)
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names()) & ours
        revision = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
    return SchemaState(revision, head(), frozenset(present))


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Create or upgrade our tables to head; returns (revision before, revision after)."""
    before = state(engine)
    if not before.known:
        raise ConfigError(_ahead(before))
    with engine.begin() as conn:
        cfg = config(conn)
        if before.fresh:
            own_metadata().create_all(conn)
            command.stamp(cfg, "head")
        else:
            if before.revision is None:
                command.stamp(cfg, BASELINE)  # made by cachework before migrations existed
            command.upgrade(cfg, "head")
    return before.revision, before.head


def _ahead(s: SchemaState) -> str:
    return (
        f"the database's cachework schema is at revision {s.revision}, which this cachework "
        f"does not know (its head is {s.head}): upgrade cachework"
    )


def check_schema(engine: sa.Engine, *, fresh_ok: bool = False) -> SchemaState:
    """ConfigError (one line naming the command to run) unless our tables are at head, or
    (`fresh_ok`) the database has none of them yet."""
    s = state(engine)
    if s.current or (s.fresh and fresh_ok):
        return s
    if s.fresh:
        raise ConfigError(f"the database has no cachework tables: run `{INIT_COMMAND}`")
    if not s.known:
        raise ConfigError(_ahead(s))
    at = s.revision or f"{BASELINE} (tables made before migrations)"
    raise ConfigError(
        f"the database's cachework schema is behind (at {at}, head {s.head}): "
        f"run `{UPGRADE_COMMAND}`"
    )


def differences(engine: sa.Engine) -> list[str]:
    """How our tables in the database differ from the code's (a dropped column, a missing
    index, another type), one phrase each; [] when they match."""
    ours = own_metadata()

    def include(_obj, name, type_, _reflected, _compare_to) -> bool:
        return type_ != "table" or name in ours.tables

    with engine.connect() as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLite: expression indexes cannot be compared
        context = MigrationContext.configure(conn, opts={"include_object": include})
        diffs = compare_metadata(context, ours)
    return [_describe(d) for d in diffs]


def _describe(diff) -> str:
    if isinstance(diff, list):  # modify_* of one column: (op, schema, table, column, ...)
        op, _schema, table, column = diff[0][:4]
        return f"{table}.{column}: {op.removeprefix('modify_')} differs"
    op = diff[0]
    if op in ("add_table", "remove_table"):
        return f"table {diff[1].name} {'missing' if op == 'add_table' else 'not expected'}"
    if op in ("add_column", "remove_column"):
        where = f"{diff[2]}.{diff[3].name}"
        return f"column {where} {'missing' if op == 'add_column' else 'not expected'}"
    if op in ("add_index", "remove_index"):
        return f"index {diff[1].name} {'missing' if op == 'add_index' else 'not expected'}"
    return f"{op} {getattr(diff[1], 'name', diff[1])}"


def check_tables(engine: sa.Engine) -> None:
    """ConfigError naming every difference between our tables and the code's."""
    found = differences(engine)
    if found:
        raise ConfigError(
            f"cachework's tables in the database differ from revision {head()}: "
            f"{'; '.join(found)} (restore them from a backup, or repair them by hand)"
        )


def history() -> list[str]:
    """One line per revision, newest first."""
    return [f"{r.revision}  {r.doc.splitlines()[0] if r.doc else ''}" for r in _revisions()]
