"""The app's projects: which table and key column they live in, and what a key looks like.

Project cache items are keyed by the app's own projects (they may live in any table,
with any key type). A `ProjectSource` names that table, its key column and
the key type, and is the one place that lists projects, checks that one exists and turns
a project argument into its canonical string, the form stored in `cache_items.project`:

- `uuid`: a `uuid.UUID`, or a string `uuid.UUID()` parses (any case, with or without
  hyphens); canonical: lowercase, hyphenated.
- `int`: an int (not a bool) or a string of decimal digits, within signed 64 bits;
  canonical: `str(int(value))` (`42`, `"42"` and `"042"` all give `"42"`).
- `text`: a non-empty string of at most NAME_MAX (255) characters, without NUL; canonical:
  itself.

It is built from `CACHEWORK_PROJECTS` (`[schema.]table.column[:uuid|int|text]`, default
`projects.uuid:uuid`, `off` for no projects table: only site-wide items) by
`ProjectSource.from_settings(settings)`. When the table is in the app's model metadata, the
model's column is used for the queries (so a `sa.Uuid` column stored as 32 hex characters
on SQLite, or natively on PostgreSQL, compares correctly) and an omitted key type is
inferred from its type (`Uuid` -> uuid, `Integer` -> int, anything else -> text). A table
that is not in the model metadata is queried by name and an omitted key type means text.

Imports nothing but SQLAlchemy and `cache` modules; takes a Session; usable in any process.
"""

from __future__ import annotations

import builtins
import logging
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework.errors import ConfigError, NotFoundError, ValidationError
from cachework.schema import cache_items
from cachework.text import bounded

log = logging.getLogger(__name__)

KEY_TYPES = ("uuid", "int", "text")
SETTING = "CACHEWORK_PROJECTS"
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _infer(column: sa.Column) -> str:
    """The key type a model column implies."""
    if isinstance(column.type, sa.Uuid):
        return "uuid"
    if isinstance(column.type, sa.Integer):
        return "int"
    return "text"


def _setting_value(table: str, column: str, key_type: str | None) -> str:
    return f"{table}.{column}" + (f":{key_type}" if key_type else "")


def _model_metadata(modules: Iterable[str]) -> builtins.list[sa.MetaData]:
    """The `Base.metadata` of the configured model modules already imported (bootstrap
    imports them; this module never does)."""
    found = []
    for name in modules:
        module = sys.modules.get(name)
        metadata = getattr(getattr(module, "Base", None), "metadata", None)
        if isinstance(metadata, sa.MetaData) and metadata not in found:
            found.append(metadata)
    return found


@dataclass(frozen=True)
class ProjectSource:
    """The app's projects table, key column and key type (`table` None: no projects).

    `table` may be schema-qualified (`schema.table`). `model_column` is the app's mapped
    column when the table is in its model metadata (used for typed comparisons), else
    None (the table is queried by name)."""

    table: str | None
    column: str | None = None
    key_type: str = "text"
    model_column: sa.Column | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.key_type not in KEY_TYPES:
            raise ConfigError(
                f"project key type {self.key_type!r} is not one of {', '.join(KEY_TYPES)}"
            )
        if self.table is not None and not self.column:
            raise ConfigError(f"projects table {self.table!r} needs a key column")

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def off(cls) -> ProjectSource:
        """No projects table: only site-wide items (`CACHEWORK_PROJECTS=off`)."""
        return cls(None, None, "text")

    @classmethod
    def from_settings(
        cls, settings, metadata: Iterable[sa.MetaData] | None = None
    ) -> ProjectSource:
        """The source `settings.projects` names (CACHEWORK_PROJECTS).

        The table is looked up in `metadata` (default: the `Base.metadata` of the
        configured model modules that are already imported, i.e. after bootstrap). A key
        type given in the setting must agree with a model column of type Uuid or Integer;
        an omitted one is inferred from the model column, or is text for a table the
        models do not define. Omitting it before the model modules are imported is a
        ConfigError (the type cannot be told yet)."""
        spec = settings.projects
        if spec is None:
            return cls.off()
        table_name, column_name, declared = spec
        value = _setting_value(table_name, column_name, declared)
        if metadata is None:
            missing = [m for m in settings.models if m not in sys.modules]
            if declared is None and missing:
                raise ConfigError(
                    f"{SETTING}={value!r} gives no key type and the model module(s) "
                    f"{', '.join(missing)} are not loaded yet to infer it from; run "
                    "bootstrap first or write the type (e.g. :uuid, :int, :text)"
                )
            metadata = _model_metadata(settings.models)
        model_table = next((m.tables[table_name] for m in metadata if table_name in m.tables), None)
        model_column = None
        if model_table is not None:
            model_column = model_table.c.get(column_name)
            if model_column is None:
                raise ConfigError(
                    f"{SETTING}={value!r}: table {table_name!r} has no column "
                    f"{column_name!r} (columns: {', '.join(model_table.c.keys())})"
                )
        inferred = _infer(model_column) if model_column is not None else "text"
        key_type = declared or inferred
        if inferred != "text" and key_type != inferred:
            raise ConfigError(
                f"{SETTING}={value!r}: column {table_name}.{column_name} is of type "
                f"{model_column.type}, which holds {inferred} keys, not {key_type}"
            )
        return cls(table_name, column_name, key_type, model_column)

    # --- what it is ------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.table is not None

    @property
    def label(self) -> str:
        """`table.column`, as errors name it."""
        return f"{self.table}.{self.column}" if self.enabled else f"{SETTING}=off"

    def _table_column(self) -> sa.ColumnElement:
        if self.model_column is not None:
            return self.model_column
        schema, _, name = self.table.rpartition(".")
        return sa.table(name, sa.column(self.column), schema=schema or None).c[self.column]

    def _bind(self, key: str) -> sa.BindParameter:
        """The canonical key as the value compared with the key column. Integers go as
        64-bit (an int4 column compares with an int8 value, in its range or not); other
        keys are typed as the model's column (a `sa.Uuid` gets a uuid.UUID), or, for a
        table queried by name, are an untyped string the database converts to the
        column's own type (a native uuid, varchar, text)."""
        column_type = getattr(self.model_column, "type", None)
        if self.key_type == "int" and (column_type is None or isinstance(column_type, sa.Integer)):
            return sa.bindparam("key", int(key), type_=sa.BigInteger())
        if column_type is None:
            return sa.bindparam("key", key, type_=sa.types.NullType())
        value: object = key
        if self.key_type == "uuid" and isinstance(column_type, sa.Uuid) and column_type.as_uuid:
            value = uuid.UUID(key)
        return sa.bindparam("key", value, type_=column_type)

    # --- keys --------------------------------------------------------------------------------

    def canonical(self, project: object) -> str | None:
        """The canonical string of `project` (None stays None: the site-wide scope).

        ValidationError naming the value when it is not a key of this type."""
        if project is None:
            return None
        if self.key_type == "uuid":
            return _canonical_uuid(project)
        if self.key_type == "int":
            return _canonical_int(project)
        return _canonical_text(project)

    # --- the database ----------------------------------------------------------------------

    def list(self, session: Session) -> builtins.list[str]:
        """Every project key (canonical strings) in the key column's order; empty when
        there is no projects table. A stored value that is not a key of this type is
        logged and skipped (it could not be synced anyway)."""
        if not self.enabled:
            return []
        column = self._table_column()
        keys: dict[str, None] = {}
        rows = session.execute(sa.select(column).where(column.is_not(None)).order_by(column))
        for value in rows.scalars():
            try:
                keys[self.canonical(value)] = None
            except ValidationError as exc:
                log.warning("skipping project %r of %s: %s", value, self.label, exc)
        return builtins.list(keys)

    def exists(self, session: Session, key: str) -> bool:
        """True if the canonical `key` has a row in the projects table."""
        if not self.enabled:
            return False
        column = self._table_column()
        query = sa.select(sa.literal(1)).select_from(column.table).where(column == self._bind(key))
        return session.execute(query.limit(1)).first() is not None

    def check(self, session: Session, project: object, allow_orphans: bool = False) -> str | None:
        """The canonical key of an existing project, or None for the site-wide scope.

        A malformed value is a ValidationError, an unknown project a NotFoundError naming
        the projects table and column (or the setting, with no projects table). With
        `allow_orphans`, a project that no longer exists but still has cache items is
        accepted, so its items can be deleted."""
        key = self.canonical(project)
        if key is None:
            return None
        if self.exists(session, key):
            return key
        if allow_orphans and _has_items(session, key):
            return key
        if not self.enabled:
            raise NotFoundError(
                f"project {key!r}: no projects table is configured ({SETTING}=off: only "
                "site-wide items, project=None)"
            )
        raise NotFoundError(f"project {key!r} does not exist (no row in {self.label})")


def _has_items(session: Session, key: str) -> bool:
    query = sa.select(cache_items.c.id).where(cache_items.c.project == key).limit(1)
    return session.execute(query).first() is not None


def _canonical_uuid(project: object) -> str:
    if isinstance(project, uuid.UUID):
        return str(project)
    if not isinstance(project, str):
        raise ValidationError(
            f"project={project!r} must be a uuid (string or uuid.UUID) or None (site-wide)"
        )
    try:
        return str(uuid.UUID(project))
    except ValueError:
        raise ValidationError(
            f"project={project!r} is not a uuid (expected e.g. "
            "'e9701604-4ccc-426c-a67c-864c15aff6e2'; None means a site-wide item)"
        ) from None


def _canonical_int(project: object) -> str:
    if isinstance(project, bool) or not isinstance(project, int | str):
        raise ValidationError(
            f"project={project!r} must be an integer project id (int or digits) or None"
        )
    if isinstance(project, str):
        digits = project[1:] if project[:1] in ("-", "+") else project
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
            raise ValidationError(
                f"project={project!r} is not an integer project id (expected e.g. '42'; "
                "None means a site-wide item)"
            )
        project = int(project)
    if not INT_MIN <= project <= INT_MAX:
        raise ValidationError(f"project={project!r} is out of the 64-bit integer range")
    return str(project)


def _canonical_text(project: object) -> str:
    return bounded("project", project, none="None (site-wide)")  # type: ignore[return-value]
