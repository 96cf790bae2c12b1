"""The Continuum version importer: make every version table agree with its live table,
writing exactly the rows SQLAlchemy-Continuum's own unit of work would have written for
the same net changes.

A run looks at *units*, in foreign-key order:

- a `VersionModel` per versioned class that has a table of its own: its live rows (the
  join of its tables, for joined-table inheritance; the rows of its polymorphic
  identities, when its hierarchy spans several tables) against the *current* version of
  each key: the open version (validity strategy; the newest open one when some key has
  several, which is reported and, on request, repaired) or the newest version (subquery
  strategy); a current delete version (operation 2) means "no row". Single-table
  subclasses belong to the unit of the class whose table they share.
- an `AssociationVersions` per versioned many-to-many association table: Continuum
  records only inserts and deletes of association rows, reads the newest version of each
  row, and never closes one.

Changes become NEW version rows in ONE Continuum transaction, made by an explicit call
once a change is known to exist: operation 0 for a live row without a current version, 1
for a changed row, 2 for a current version whose live row is gone; a version row in every
table of the hierarchy; PropertyModTracker's `_mod` flags; under the validity strategy the
superseded versions closed; TransactionChanges' rows, one per class changed. Everything is
INSERT ... SELECT / UPDATE in the database, in the caller's transaction, which
`begin_import()` opens with the import lock and one snapshot; nothing is loaded row by row.
A plain run writes directly and counts from its writes; a dry run, a limit or a switched-off
kind counts everything first (so nothing is written when the limit would be exceeded).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapper, Session
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.operation import Operation
from sqlalchemy_continuum.plugins import (
    NullDeletePlugin,
    Plugin,
    PropertyModTrackerPlugin,
    TransactionChangesPlugin,
    TransactionMetaPlugin,
)
from sqlalchemy_continuum.utils import get_versioning_manager, option

from cachework.errors import (
    ChangeLimitExceeded,
    NotFoundError,
    UnsupportedVersioning,
    ValidationError,
    shown,
)
from cachework.records import json_value
from importers.locking import begin_import
from importers.statistics import refresh_stale_statistics

MAX_REPORTED_KEYS = 100
REMOTE_ADDR_MAX = 50
USER_MAX = 255  # user key or name, as recorded on the transaction
COMMENT_MAX = 4096
Progress = Callable[[dict[str, Any]], None]

# Plugins whose effect on a flush the import reproduces. Other plugins that hook into the
# flush (version objects, version table columns) make a model unsupported.
ROW_HOOKS = (
    "before_flush",
    "before_create_version_objects",
    "after_create_version_objects",
    "after_create_version_object",
    "after_build_version_table_columns",
)
SUPPORTED_PLUGINS = (
    TransactionMetaPlugin,
    TransactionChangesPlugin,
    PropertyModTrackerPlugin,
    NullDeletePlugin,
)


@dataclass(frozen=True)
class ImportOptions:
    """What a run may do. Switched-off kinds are counted as `skipped`, never written."""

    create: bool = True
    update: bool = True
    delete: bool = True
    dry_run: bool = False
    max_changes: int | None = None

    def __post_init__(self) -> None:
        for name in ("create", "update", "delete", "dry_run"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValidationError(f"{name}={value!r} must be true or false")
        limit = self.max_changes
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValidationError(f"max_changes={limit!r} must be a whole number or None")
        if limit is not None and limit < 0:
            raise ValidationError(f"max_changes={limit!r} must be 0 or more (or None: no limit)")

    @property
    def writes_everything(self) -> bool:
        """A real run of every kind with no limit: nothing needs counting before writing."""
        return (
            self.create
            and self.update
            and self.delete
            and not self.dry_run
            and (self.max_changes is None)
        )


@dataclass
class Counts:
    """Per-unit counts. `created/updated/deleted` are what the run writes (or would write)."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0

    @property
    def changes(self) -> int:
        return self.created + self.updated + self.deleted

    def as_dict(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


def switched(
    created: int, updated: int, deleted: int, unchanged: int, options: ImportOptions
) -> Counts:
    """Counts of what is needed, split by the switches into written and skipped."""
    counts = Counts(unchanged=int(unchanged))
    for kind, needed, allowed in (
        ("created", int(created), options.create),
        ("updated", int(updated), options.update),
        ("deleted", int(deleted), options.delete),
    ):
        if allowed:
            setattr(counts, kind, needed)
        else:
            counts.skipped += needed
    return counts


@dataclass(frozen=True)
class Needed:
    """Which writes a unit needs: versions for new or changed rows, for gone rows."""

    changed: bool
    gone: bool

    def __bool__(self) -> bool:
        return self.changed or self.gone


@dataclass
class ImportResult:
    """What a run did (or, for a dry run, would do); `as_dict()` is the task's JSON."""

    transaction_id: int | None
    dry_run: bool
    models: dict[str, Counts]
    warnings: list[str]
    repaired: dict[str, int] = field(default_factory=dict)
    inconsistent: dict[str, list[Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "dry_run": self.dry_run,
            "models": {
                name: {**counts.as_dict(), "repaired": self.repaired.get(name, 0)}
                for name, counts in self.models.items()
            },
            "warnings": list(self.warnings),
            "inconsistent": {name: list(keys) for name, keys in self.inconsistent.items()},
        }


# --- small SQL helpers ------------------------------------------------------------------


def _json_key(row: Sequence[Any]) -> Any:
    """A reported key in cachework's one JSON form of values (cachework.records.json_value)."""
    values = [json_value(v) for v in row]
    return values[0] if len(values) == 1 else values


def _rowcount(session: Session, statement: sa.Executable) -> int:
    """Rows a statement wrote (SQLAlchemy 2.1 keeps INSERT rowcounts only when asked)."""
    return session.execute(statement.execution_options(preserve_rowcount=True)).rowcount


def _exists(session: Session, rows: sa.Select) -> bool:
    return bool(session.execute(sa.select(sa.exists(rows))).scalar())


def _count(session: Session, table: sa.FromClause, *where: Any) -> int:
    return int(
        session.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar()
    )


# PostgreSQL types (by SQL name) without an equality operator, or whose `=` is not equality
# of value (box and circle compare areas, path the number of points): compared as text.
# json has none either, but compares as jsonb (below).
WITHOUT_EQUALITY = frozenset(
    {"xml", "jsonpath", "point", "polygon", "box", "circle", "path", "txid_snapshot",
     "pg_snapshot"}
)  # fmt: skip


def stored_type(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> sa.types.TypeEngine:
    """The type the database stores `type_` as, which is where it looks up `=`: a
    variant's (`with_variant`), a TypeDecorator's implementation (what its
    `load_dialect_impl` chooses) and a PostgreSQL domain's data type, however nested."""
    impl = type_.dialect_impl(dialect)
    while True:
        if isinstance(impl, sa.types.TypeDecorator):
            impl = impl.impl_instance.dialect_impl(dialect)
        elif isinstance(impl, postgresql.DOMAIN):
            impl = sa.types.to_instance(impl.data_type).dialect_impl(dialect)
        else:
            return impl


def _sql_name(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> str | None:
    """The type's SQL name, lower case, without modifiers (`None`: it has no DDL)."""
    try:
        spec = dialect.type_compiler_instance.process(type_)
    except (sa.exc.CompileError, NotImplementedError):
        return None
    return spec.split("(")[0].strip().lower()


def equality_type(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> sa.types.TypeEngine | None:
    """What PostgreSQL must cast a value of `type_` to before comparing it (`None`: it
    compares as it is). Arrays compare element-wise, so an array casts its elements."""
    stored = stored_type(type_, dialect)
    if isinstance(stored, sa.ARRAY):
        item = equality_type(stored.item_type, dialect)
        return None if item is None else postgresql.ARRAY(item)
    if isinstance(stored, sa.JSON):
        return None if isinstance(stored, postgresql.JSONB) else postgresql.JSONB()
    if _sql_name(stored, dialect) in WITHOUT_EQUALITY:
        return sa.Text()
    return None


def comparable(column: Any, type_: sa.types.TypeEngine, dialect: sa.Dialect) -> Any:
    """`column` in a form SQL can compare for equality. On PostgreSQL, `json` has no
    equality operator, so it compares as `jsonb` (semantic equality, as Python's `==` on
    the loaded values); the few other types without a true one (`xml`, `jsonpath`,
    geometric types) compare as their text; also when the column's type reaches them
    through a TypeDecorator, a variant, a domain or an array, since PostgreSQL looks the
    operator up on the stored type. Every other type has one (binary and pickled values
    compare as bytes); SQLite compares anything (it stores JSON as text)."""
    if dialect.name != "postgresql":
        return column
    target = equality_type(type_, dialect)
    return column if target is None else sa.cast(column, target)


def _differs(a: Any, b: Any, type_: sa.types.TypeEngine, dialect: sa.Dialect) -> Any:
    return comparable(a, type_, dialect).is_distinct_from(comparable(b, type_, dialect))


def _same_key(left: Sequence[Any], right: Sequence[Any]) -> list[Any]:
    return [a == b for a, b in zip(left, right, strict=True)]


# --- the run's Continuum transaction -------------------------------------------------------


class RunTransaction:
    """The run's one Continuum transaction: `begin()` makes it (once) through Continuum's
    unit of work, so plugins' `transaction_args` apply; then the run's user, remote
    address and comment go on it."""

    def __init__(
        self, session: Session, manager: Any, user: str | None, remote_addr: str | None,
        comment: str | None,
    ) -> None:  # fmt: skip
        self.session = session
        self.manager = manager
        self.user, self.remote_addr, self.comment = user, remote_addr, comment
        self.txn: Any = None
        cls = manager.transaction_cls
        columns = sa.inspect(cls).columns if isinstance(cls, type) else {}
        self.user_column = columns.get("user_id")
        self.has_meta = hasattr(cls, "meta")
        self.changes_model = next(
            (p.model_class for p in manager.plugins if isinstance(p, TransactionChangesPlugin)),
            None,
        )

    def check(self) -> None:
        """Refuse (before anything is written) a user or comment this set-up cannot
        record, and a user key that is not the user class's key type or not a user."""
        needs_meta = self.comment is not None or (
            self.user is not None and self.user_column is None
        )
        if needs_meta and not self.has_meta:
            raise ValidationError(
                "user/comment need Continuum's TransactionMetaPlugin (or, for the user, "
                "a user class) in the app's make_versioned() call"
            )
        if self.user is not None and self.user_column is not None:
            self.user_key = self._user_key(self.user)

    def _user_key(self, user: str) -> Any:
        column = self.user_column
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            python_type = str
        try:
            if python_type is int:
                value: Any = int(user)
            elif python_type is uuid.UUID:
                value = uuid.UUID(user)
            else:
                value = python_type(user)
        except (TypeError, ValueError):
            raise ValidationError(
                f"user={user!r} is not a valid {python_type.__name__} (the type of the user "
                "class's key, which Continuum's transaction.user_id refers to)"
            ) from None
        relationship = sa.inspect(self.manager.transaction_cls).relationships.get("user")
        if relationship is not None:
            user_cls = relationship.mapper.class_
            if self.session.get(user_cls, value) is None:
                raise NotFoundError(f"user={user!r}: no {user_cls.__name__} with that key")
        return value

    @property
    def id(self) -> int | None:
        return None if self.txn is None else int(self.txn.id)

    def begin(self) -> int:
        """The transaction's id; it is made (and its row inserted) on the first call."""
        if self.txn is None:
            uow = self.manager.unit_of_work(self.session)
            txn = uow.create_transaction(self.session)
            if self.remote_addr is not None:
                txn.remote_addr = self.remote_addr
            meta: dict[str, str] = {}
            if self.user is not None:
                if self.user_column is not None:
                    txn.user_id = self.user_key
                else:
                    meta["user"] = self.user
            if self.comment is not None:
                meta["comment"] = self.comment
            if meta:
                txn.meta = meta
            self.txn = txn
        return int(self.txn.id)

    def record_changes(self, entities: set[str]) -> None:
        """TransactionChanges' rows: one per class name changed in the transaction."""
        if self.changes_model is None or self.txn is None or not entities:
            return
        table = self.changes_model.__table__
        self.session.execute(
            sa.insert(table),
            [{"transaction_id": self.id, "entity_name": name} for name in sorted(entities)],
        )


# --- units ----------------------------------------------------------------------------------


@dataclass
class Level:
    """One table of a model's hierarchy: live and version table, the columns copied from
    one to the other and PropertyModTracker's flags."""

    live: sa.Table
    versions: sa.Table
    pairs: list[tuple[sa.Column, sa.Column]]  # live column -> version column
    keys: list[tuple[sa.Column, sa.Column]]  # primary key: live -> version
    mods: list[tuple[sa.Column, sa.Column, sa.Column]]  # flag, live column, version column
    # Columns only some single-table classes map: their polymorphic identities (Continuum
    # versions such a column only for objects of those classes).
    only: dict[sa.Column, list[Any]] = field(default_factory=dict)
    join: sa.ColumnElement[bool] | None = None  # live: to the level above
    version_join: Callable[[sa.FromClause, sa.FromClause], Any] | None = None


class VersionModel:
    """A versioned class with a table of its own (with the single-table subclasses that
    share it): its live rows against the current version of each key."""

    def __init__(self, cls: type, dialect: sa.Dialect) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.dialect = dialect
        self.mapper: Mapper = sa.inspect(cls)
        self.manager = get_versioning_manager(cls)
        self.version_cls = version_class(cls)
        self.strategy = option(cls, "strategy")
        self.validity = self.strategy == "validity"
        self.tx = option(cls, "transaction_column_name")
        self.end = option(cls, "end_transaction_column_name")
        self.op = option(cls, "operation_type_column_name")
        self.mod_tracking = any(
            isinstance(p, PropertyModTrackerPlugin) for p in self.manager.plugins
        )
        self.null_delete = any(isinstance(p, NullDeletePlugin) for p in self.manager.plugins)
        chain = [m for m in reversed(list(self.mapper.iterate_to_root())) if not m.single]
        self.levels = [self._level(m, chain[i - 1] if i else None) for i, m in enumerate(chain)]
        self.root = self.levels[0]
        self.classes = [m.class_ for m in self._single_family(self.mapper)]
        self.partition: Callable[[sa.FromClause], Any] | None = None
        self.joined = self._hierarchy_has_joined_levels()
        self.warnings: list[str] = []
        self.inconsistent: list[Any] = []
        self.several_open = False
        self.extra_open = 0
        self.repaired = 0

    @staticmethod
    def _single_family(mapper: Mapper) -> list[Mapper]:
        """The mapper and its descendants that share its table (single-table)."""
        family = [mapper]
        for sub in mapper.self_and_descendants:
            if sub is not mapper and sub.local_table is mapper.local_table:
                family.append(sub)
        return family

    def _level(self, mapper: Mapper, parent: Mapper | None) -> Level:
        live: sa.Table = mapper.local_table
        versions: sa.Table = version_class(mapper.class_).__table__
        internal = {self.tx, self.end, self.op}
        by_name = {c.name: c for c in versions.c}
        pairs = [
            (c, by_name[c.name]) for c in live.c if c.name in by_name and c.name not in internal
        ]
        keys = [(c, by_name[c.name]) for c in live.primary_key.columns]
        family = self._single_family(self.mapper)
        mods = []
        only: dict[sa.Column, list[Any]] = {}
        for column, vcolumn in pairs:
            mapping = [m for m in family if _maps(m, column)]
            if not mapping or column.primary_key:
                continue
            if len(mapping) < len(family):
                only[column] = sorted(m.polymorphic_identity for m in mapping)
            if not self.mod_tracking:
                continue
            # Continuum sets the attribute `<attribute key>_mod`; its column is named
            # after the live column. Where the two differ, the flag stays false.
            prop = mapping[0].get_property_by_column(column)
            flag = sa.inspect(version_class(mapping[0].class_)).attrs.get(prop.key + "_mod")
            if flag is None or not hasattr(flag, "columns"):
                continue
            if flag.columns[0].table is versions:
                mods.append((flag.columns[0], column, vcolumn))
        level = Level(live, versions, pairs, keys, mods, only)
        if parent is not None:
            condition = mapper.inherit_condition
            level.join = condition
            parent_versions = version_class(parent.class_).__table__
            tx = self.tx

            def version_join(upper: sa.FromClause, lower: sa.FromClause) -> Any:
                mapping = {
                    c: upper.c[parent_versions.c[c.name].key]
                    for c in parent.local_table.c
                    if c.name in parent_versions.c
                }
                mapping.update(
                    {c: lower.c[versions.c[c.name].key] for c in live.c if c.name in versions.c}
                )
                return sa.and_(_replace(condition, mapping), upper.c[tx] == lower.c[tx])

            level.version_join = version_join
        return level

    def planned_columns(self) -> dict[sa.Table, list[str]]:
        """The columns of each table the compare's plans depend on (for ANALYZE)."""
        disc = self.mapper.base_mapper.polymorphic_on if self.joined else None
        out: dict[sa.Table, list[str]] = {}
        for level in self.levels:
            keys = [live.name for live, _v in level.keys]
            extra = [disc.name] if disc is not None and level is self.root else []
            out[level.live] = [*keys, *extra]
            internal = [self.tx, self.op] + ([self.end] if self.validity else [])
            out[level.versions] = [*keys, *extra, *internal]
        return out

    # --- refusals --------------------------------------------------------------------

    def unsupported(self) -> list[str]:
        """What this model uses that the import cannot reproduce (empty: supported)."""
        found = []
        if option(self.cls, "native_versioning"):
            found.append("native versioning (PostgreSQL triggers write its versions)")
        if self.mapper.concrete:
            found.append("concrete-table inheritance")
        if self.joined:
            disc = self.mapper.base_mapper.polymorphic_on
            if not isinstance(disc, sa.Column) or disc.table is not self.root.live:
                found.append(
                    "joined-table inheritance without a polymorphic_on column in the base table"
                )
        for level in self.levels:
            known = {v.name for _l, v in level.pairs} | {self.tx, self.end, self.op}
            known |= {f.name for f, _l, _v in level.mods}
            if self.mod_tracking:
                known |= {c.name + "_mod" for c in level.live.c}
            extra = [c.name for c in level.versions.c if c.name not in known]
            if extra:
                found.append(
                    f"version table {level.versions.name} columns the import cannot fill: "
                    f"{', '.join(extra)}"
                )
        return found

    def _joined_mappers(self) -> list[Mapper]:
        """The mappers of the hierarchy that have a table of their own."""
        base = self.mapper.base_mapper
        return [m for m in base.self_and_descendants if not m.single]

    def _table_keys(self, table: sa.Table) -> list[sa.Column]:
        """The primary key of a version table, without its transaction column."""
        return [c for c in table.primary_key.columns if c.name != self.tx]

    def _hierarchy_has_joined_levels(self) -> bool:
        base = self.mapper.base_mapper
        return any(m.local_table is not base.local_table for m in base.self_and_descendants)

    def set_partition(self) -> None:
        """Which rows of a joined hierarchy's base table are this unit's: those of its
        classes' polymorphic identities (the base class's unit: every row the other
        classes' identities do not claim)."""
        if not self.joined:
            return
        base = self.mapper.base_mapper
        disc = base.polymorphic_on
        mine = {m.polymorphic_identity for m in self._single_family(self.mapper)} - {None}
        claimed = {m.polymorphic_identity for m in base.self_and_descendants} - mine - {None}
        live, version_key = self.root.live, self.root.versions.c[disc.name].key

        def partition(table: sa.FromClause) -> Any:
            column = disc if table is live else table.c[version_key]
            if self.mapper is base:
                return sa.or_(column.is_(None), column.not_in(sorted(claimed)))
            return column.in_(sorted(mine))

        self.partition = partition

    def _is(self, identities: list[Any]) -> Any:
        """The live row is of one of these polymorphic identities."""
        return self.mapper.base_mapper.polymorphic_on.in_(identities)

    def _live_filter(self) -> list[Any]:
        return [] if self.partition is None else [self.partition(self.root.live)]

    def _version_filter(self, table: sa.FromClause) -> list[Any]:
        return [] if self.partition is None else [self.partition(table)]

    # --- the current version of each key ---------------------------------------------------

    def current(self, tx: int | None = None) -> sa.Subquery:
        """At most one row per key of the base version table: the open version (validity)
        or the newest (subquery); the newest open one when some key has several. A
        version written by this run (`tx`) never counts."""
        v = self.root.versions
        where: list[Any] = []
        if tx is not None:
            where.append(v.c[self.tx] != tx)
        if self.validity:
            where.append(v.c[self.end].is_(None))
        if not self.validity or self.several_open:
            newer = v.alias("newer")
            inner = _same_key(
                [newer.c[c.key] for _l, c in self.root.keys], [c for _l, c in self.root.keys]
            )
            inner.append(newer.c[self.tx] > v.c[self.tx])
            if tx is not None:
                inner.append(newer.c[self.tx] != tx)
            if self.validity:
                inner.append(newer.c[self.end].is_(None))
            where.append(~sa.exists(sa.select(sa.literal(1)).select_from(newer).where(*inner)))
        return sa.select(v).where(*where).subquery("cur")

    def _source(self) -> sa.FromClause:
        joined: sa.FromClause = self.root.live
        for level in self.levels[1:]:
            joined = joined.join(level.live, level.join)
        return joined

    def _targets(self, cur: sa.Subquery) -> tuple[sa.FromClause, list[sa.FromClause]]:
        """`cur` joined to the version tables below the base (same key and transaction)."""
        tables: list[sa.FromClause] = [cur]
        for i, level in enumerate(self.levels[1:], 1):
            tables.append(level.versions.alias(f"lv{i}"))
        joined: sa.FromClause = cur
        for i, level in enumerate(self.levels[1:], 1):
            joined = joined.outerjoin(tables[i], level.version_join(tables[i - 1], tables[i]))
        return joined, tables

    def _diff(self, tx: int | None) -> dict[str, Any]:
        """The pieces of the compare: the join of live rows to current versions, and the
        conditions "missing" (no current version, or a delete) and "differs"."""
        cur = self.current(tx)
        targets, tables = self._targets(cur)
        source = self._source()
        on = _same_key(
            [live for live, _v in self.root.keys], [cur.c[v.key] for _l, v in self.root.keys]
        )
        joined = source.outerjoin(targets, sa.and_(*on))
        missing = sa.or_(
            cur.c[self.root.keys[0][1].key].is_(None), cur.c[self.op] == Operation.DELETE
        )
        flags: list[dict[sa.Column, Any]] = []
        differs = []
        for level, table in zip(self.levels, tables, strict=True):
            level_flags = {}
            for live, vcol in level.pairs:
                if live.primary_key:
                    continue
                d = _differs(live, table.c[vcol.key], live.type, self.dialect)
                if live in level.only:
                    d = sa.and_(self._is(level.only[live]), d)
                differs.append(d)
                level_flags[live] = d
            flags.append(level_flags)
        return {
            "cur": cur,
            "tables": tables,
            "joined": joined,
            "missing": missing,
            "differs": sa.or_(*differs) if differs else sa.false(),
            "flags": flags,
        }

    def _changed(self, d: dict[str, Any], create: bool, update: bool) -> list[Any]:
        wanted = []
        if create:
            wanted.append(d["missing"])
        if update:
            wanted.append(sa.and_(sa.not_(d["missing"]), d["differs"]))
        return [sa.or_(*wanted) if wanted else sa.false(), *self._live_filter()]

    def _gone(self, d: dict[str, Any]) -> list[Any]:
        cur = d["cur"]
        live = self.root.live
        live_row = (
            sa.select(sa.literal(1))
            .select_from(live)
            .where(
                *_same_key(
                    [live for live, _v in self.root.keys],
                    [cur.c[v.key] for _l, v in self.root.keys],
                )
            )
        )
        return [
            cur.c[self.op] != Operation.DELETE,
            ~sa.exists(live_row),
            *self._version_filter(cur),
        ]

    # --- preparing, counting, probing -----------------------------------------------------

    def prepare(self, session: Session, repair: bool) -> None:
        """Decide once, up front, whether some key has several open versions (validity):
        if so they are listed and reported, the newest open version counts as current,
        and with `repair` the others are closed first."""
        self.warnings = []
        if not self.validity:
            return
        v = self.root.versions
        keys = [c for _l, c in self.root.keys]
        groups = (
            sa.select(*keys, sa.func.count().label("n"))
            .where(v.c[self.end].is_(None), *self._version_filter(v))
            .group_by(*keys)
            .having(sa.func.count() > 1)
        )
        if session.execute(groups.limit(1)).first() is None:
            return
        rows = session.execute(groups.order_by(*keys).limit(MAX_REPORTED_KEYS + 1)).all()
        self.inconsistent = [_json_key(row[:-1]) for row in rows[:MAX_REPORTED_KEYS]]
        g = groups.subquery()
        found, extra = session.execute(sa.select(sa.func.count(), sa.func.sum(g.c.n - 1))).one()
        self.extra_open = int(extra)
        shown = ", ".join(map(str, self.inconsistent[:20])) + (", ..." if found > 20 else "")
        action = (
            f"closing {self.extra_open} older open version(s)"
            if repair
            else "run with repair to close all but the newest"
        )
        self.warnings.append(
            f"{self.name}: {found} key(s) have several open versions (inconsistent history; "
            f"keys: {shown}); {action}"
        )
        self.several_open = True

    def live_count(self, session: Session) -> int:
        source = self._source()
        return _count(session, source, *self._live_filter())

    def count(self, session: Session) -> tuple[int, int, int, int]:
        """(created, updated, deleted, unchanged) a run of every kind would write."""
        d = self._diff(None)
        kind = sa.case((d["missing"], 0), else_=1)
        rows = session.execute(
            sa.select(kind, sa.func.count())
            .select_from(d["joined"])
            .where(*self._changed(d, True, True))
            .group_by(kind)
        ).all()
        needed = {int(k): int(n) for k, n in rows}
        deleted = _count(session, d["cur"], *self._gone(d))
        live = self.live_count(session)
        created, updated = needed.get(0, 0), needed.get(1, 0)
        return created, updated, deleted, live - created - updated

    def probe(self, session: Session) -> Needed:
        """Which writes are needed at all (each probe stops at its first row)."""
        d = self._diff(None)
        changed = (
            sa.select(sa.literal(1)).select_from(d["joined"]).where(*self._changed(d, True, True))
        )
        gone = sa.select(sa.literal(1)).select_from(d["cur"]).where(*self._gone(d))
        return Needed(changed=_exists(session, changed), gone=_exists(session, gone))

    # --- writing ---------------------------------------------------------------------------

    def write(self, session: Session, tx: int, options: ImportOptions, needed: Needed) -> Counts:
        """Write the allowed kinds (of those `needed`) in transaction `tx`; count them."""
        self.changed_entities: set[str] = set()
        d = self._diff(tx)
        literal_tx = sa.literal(tx, sa.BigInteger)
        condition = self._changed(d, options.create, options.update)
        kind = sa.case((d["missing"], Operation.INSERT), else_=Operation.UPDATE)
        if needed.changed:
            # Levels with mod flags need the previous version: from the compare, deepest
            # first (the base version table still holds no row of `tx` to skip); the
            # others copy the live rows of the keys whose base version was just written.
            late = [i for i, level in enumerate(self.levels) if i and not level.mods]
            early = [i for i in range(len(self.levels)) if i not in late]
            for index in reversed(early):
                level = self.levels[index]
                values = [*self._live_values(level), literal_tx, kind]
                for _flag, live, _v in level.mods:
                    changed = sa.or_(d["missing"], d["flags"][index][live])
                    if live in level.only:
                        changed = sa.and_(self._is(level.only[live]), changed)
                    values.append(changed)
                rows = sa.select(*values).select_from(d["joined"]).where(*condition)
                session.execute(sa.insert(level.versions).from_select(self._names(level), rows))
            for index in late:
                self._write_from_base(session, self.levels[index], tx)
        v = self.root.versions
        written = sa.and_(
            v.c[self.tx] == tx, v.c[self.op] != Operation.DELETE, *self._version_filter(v)
        )
        by_op = {}
        if needed.changed:
            count = sa.select(v.c[self.op], sa.func.count()).where(written).group_by(v.c[self.op])
            by_op = dict(session.execute(count).all())
        created, updated = int(by_op.get(Operation.INSERT, 0)), int(by_op.get(Operation.UPDATE, 0))
        self.changed_entities = self._entities(session, v, written) if created + updated else set()
        deleted = 0
        if options.delete and needed.gone:
            deleted = self._write_deletes(session, d, literal_tx)
        if self.validity and created + updated + deleted:
            for level in self.levels:
                self._close_superseded(session, level, tx)
            if self.joined:
                self._close_joined(session, tx)
        return Counts(
            created=created,
            updated=updated,
            deleted=deleted,
            unchanged=self.live_count(session) - created - updated,
        )

    def _names(self, level: Level) -> list[sa.Column]:
        """The version table columns a write fills, in the order of `_live_values`."""
        v = level.versions
        return [
            *(vcol for _l, vcol in level.pairs),
            v.c[self.tx],
            v.c[self.op],
            *(flag for flag, _l, _v in level.mods),
        ]

    def _live_values(self, level: Level) -> list[Any]:
        return [
            sa.case((self._is(level.only[live]), live), else_=sa.null())
            if live in level.only
            else live
            for live, _v in level.pairs
        ]

    def _write_from_base(self, session: Session, level: Level, tx: int) -> None:
        """A lower table's versions (no mod flags) for the keys whose base version this
        run just wrote: the live rows, the base version's operation."""
        new = self.root.versions.alias("new")
        on = _same_key(
            [live for live, _v in self.root.keys], [new.c[v.key] for _l, v in self.root.keys]
        )
        source = self._source().join(new, sa.and_(*on))
        rows = (
            sa.select(*self._live_values(level), sa.literal(tx, sa.BigInteger), new.c[self.op])
            .select_from(source)
            .where(
                new.c[self.tx] == tx, new.c[self.op] != Operation.DELETE, *self._version_filter(new)
            )
        )
        session.execute(sa.insert(level.versions).from_select(self._names(level), rows))

    def _entities(self, session: Session, table: sa.FromClause, *where: Any) -> set[str]:
        """The class names of the rows of `table` (a version table, or the current
        versions) that `where` selects: TransactionChanges' entity names."""
        if len(self.classes) == 1:
            return {self.name}
        disc = self.mapper.base_mapper.polymorphic_on
        column = table.c[self.root.versions.c[disc.name].key]
        names = set()
        for identity in session.scalars(sa.select(column).distinct().where(*where)):
            mapper = self.mapper.polymorphic_map.get(identity)
            names.add(mapper.class_.__name__ if mapper is not None else self.name)
        return names

    def _write_deletes(self, session: Session, d: dict[str, Any], tx: Any) -> int:
        """Delete versions for the current versions whose live row is gone; returns how
        many. Their classes are read first (NullDelete leaves no discriminator)."""
        cur, tables = d["cur"], d["tables"]
        deleted = 0
        gone_entities = self._entities(session, cur, *self._gone(d))
        for index, level in enumerate(self.levels):
            table = tables[index]
            names, values = [], []
            for live, vcol in level.pairs:
                names.append(vcol)
                value = table.c[vcol.key]
                if self.null_delete and not live.primary_key:
                    value = sa.null()
                values.append(value)
            names += [level.versions.c[self.tx], level.versions.c[self.op]]
            values += [tx, sa.literal(Operation.DELETE, sa.SmallInteger)]
            for flag, live, _v in level.mods:
                names.append(flag)
                if live in level.only:  # a flag only the deleted version's classes set
                    disc = self.mapper.base_mapper.polymorphic_on
                    kind = tables[0].c[self.root.versions.c[disc.name].key]
                    values.append(kind.in_(level.only[live]))
                else:
                    values.append(sa.true())
            source: sa.FromClause = cur
            for i in range(1, index + 1):
                source = source.join(
                    tables[i], self.levels[i].version_join(tables[i - 1], tables[i])
                )
            rows = sa.select(*values).select_from(source).where(*self._gone(d))
            count = _rowcount(session, sa.insert(level.versions).from_select(names, rows))
            deleted = count if index == 0 else deleted
        if deleted:
            self.changed_entities |= gone_entities
        return deleted

    def _close_superseded(self, session: Session, level: Level, tx: int) -> None:
        """Close the version each new row supersedes: its key's newest open version (in
        a joined hierarchy: its newest version before `tx`, open or not, as Continuum's
        flush picks it; see `_close_joined`)."""
        v = level.versions
        keys = [c for _l, c in level.keys]
        new = v.alias("new")
        if self.joined:
            older = v.alias("older")
            prev = (
                sa.select(
                    *(older.c[k.key] for k in keys), sa.func.max(older.c[self.tx]).label("prev")
                )
                .select_from(
                    older.join(
                        new,
                        sa.and_(
                            new.c[self.tx] == tx,
                            *_same_key(
                                [new.c[k.key] for k in keys], [older.c[k.key] for k in keys]
                            ),
                        ),
                    )
                )
                .where(older.c[self.tx] < tx)
                .group_by(*(older.c[k.key] for k in keys))
                .subquery("prev")
            )
            session.execute(
                sa.update(v)
                .where(*_same_key(keys, [prev.c[k.key] for k in keys]), v.c[self.tx] == prev.c.prev)
                .values({self.end: tx})
            )
            return
        where = [
            v.c[self.end].is_(None),
            v.c[self.tx] != tx,
            sa.exists(
                sa.select(sa.literal(1))
                .select_from(new)
                .where(new.c[self.tx] == tx, *_same_key([new.c[k.key] for k in keys], keys))
            ),
        ]
        if self.several_open:  # leave older open versions alone (reported, not repaired)
            newer = v.alias("newer")
            where.append(
                ~sa.exists(
                    sa.select(sa.literal(1))
                    .select_from(newer)
                    .where(
                        *_same_key([newer.c[k.key] for k in keys], keys),
                        newer.c[self.end].is_(None),
                        newer.c[self.tx] > v.c[self.tx],
                        newer.c[self.tx] != tx,
                    )
                )
            )
        session.execute(sa.update(v).where(*where).values({self.end: tx}))

    def _close_joined(self, session: Session, tx: int) -> None:
        """Continuum closes a superseded version through the version object it loads, an
        instance of the class that version was: so the version is closed in every table
        of that class, also those this unit's class lacks (a key re-created as another
        class of the hierarchy). Every closed (key, transaction) is closed everywhere."""
        tables = [version_class(m.class_).__table__ for m in self._joined_mappers()]
        for table in tables:
            keys = [table.c[c.name] for c in self._table_keys(table)]
            for level in self.levels:
                if level.versions is table:
                    continue
                lv = level.versions
                closed = (
                    sa.select(*(c for _l, c in level.keys), lv.c[self.tx])
                    .where(lv.c[self.end] == tx, lv.c[self.tx] != tx)
                    .subquery("closed")
                )
                session.execute(
                    sa.update(table)
                    .where(
                        *_same_key(keys, [closed.c[c.key] for _l, c in level.keys]),
                        table.c[self.tx] == closed.c[self.tx],
                        sa.or_(table.c[self.end].is_(None), table.c[self.end] != tx),
                    )
                    .values({self.end: tx})
                )

    def entities(self, session: Session, tx: int) -> set[str]:
        """The class names this unit changed in `tx` (TransactionChanges' entity names)."""
        return self.changed_entities

    def repair(self, session: Session) -> int:
        """Close every open version that has a newer open one, with the next version's id
        as its end (what Continuum's flush would have written); every table of the model."""
        total = 0
        for index, level in enumerate(self.levels):
            v = level.versions
            keys = [c for _l, c in level.keys]
            nxt, newer = v.alias("nxt"), v.alias("newer")
            next_tx = (
                sa.select(sa.func.min(nxt.c[self.tx]))
                .where(
                    *_same_key([nxt.c[k.key] for k in keys], keys), nxt.c[self.tx] > v.c[self.tx]
                )
                .scalar_subquery()
            )
            has_newer_open = sa.exists(
                sa.select(sa.literal(1))
                .select_from(newer)
                .where(
                    *_same_key([newer.c[k.key] for k in keys], keys),
                    newer.c[self.end].is_(None),
                    newer.c[self.tx] > v.c[self.tx],
                )
            )
            stmt = sa.update(v).where(v.c[self.end].is_(None), has_newer_open)
            written = _rowcount(session, stmt.values({self.end: next_tx}))
            if index == 0:
                total = written
        self.several_open = False
        return total


def _maps(mapper: Mapper, column: sa.Column) -> bool:
    try:
        mapper.get_property_by_column(column)
    except sa.orm.exc.UnmappedColumnError:
        return False
    return True


def _replace(expression: Any, mapping: dict[sa.Column, Any]) -> Any:
    """`expression` with the columns of `mapping` replaced."""
    return sa.sql.visitors.replacement_traverse(
        expression,
        {},
        lambda element: mapping.get(element) if isinstance(element, sa.Column) else None,
    )


class AssociationVersions:
    """A versioned many-to-many association table, as Continuum's unit of work fills its
    version table: a row per association inserted (operation 0, every column) or deleted
    (operation 2, the columns the relationship's DELETE names); the newest version of a
    row is its current one, and no version is ever closed."""

    def __init__(self, table: sa.Table, versions: sa.Table, prop: Any, manager: Any,
                 dialect: sa.Dialect) -> None:  # fmt: skip
        self.name = table.name
        self.live = table
        self.versions = versions
        self.manager = manager
        self.tx = manager.options["transaction_column_name"]
        self.op = manager.options["operation_type_column_name"]
        self.keys = [(c, versions.c[c.name]) for c in table.primary_key.columns]
        self.pairs = [(c, versions.c[c.name]) for c in table.c if c.name in versions.c]
        synced = {c for pair in (*prop.synchronize_pairs, *prop.secondary_synchronize_pairs)
                  for c in pair if c.table is table}  # fmt: skip
        self.delete_columns = [(c, v) for c, v in self.pairs if c in synced]
        self.warnings: list[str] = []
        self.inconsistent: list[Any] = []
        self.repaired = 0
        self.classes: list[type] = []

    def unsupported(self) -> list[str]:
        if not self.keys:
            return [
                f"association table {self.name} has no primary key (Continuum's version "
                "table for it then holds one change per transaction)"
            ]
        return []

    def prepare(self, session: Session, repair: bool) -> None:
        self.warnings = []

    def planned_columns(self) -> dict[sa.Table, list[str]]:
        keys = [live.name for live, _v in self.keys]
        return {self.live: keys, self.versions: [*keys, self.tx, self.op]}

    def current(self, tx: int | None) -> sa.Subquery:
        v = self.versions
        newer = v.alias("newer")
        inner = _same_key([newer.c[c.key] for _l, c in self.keys], [c for _l, c in self.keys])
        inner.append(newer.c[self.tx] > v.c[self.tx])
        where = []
        if tx is not None:
            inner.append(newer.c[self.tx] != tx)
            where.append(v.c[self.tx] != tx)
        where.append(~sa.exists(sa.select(sa.literal(1)).select_from(newer).where(*inner)))
        return sa.select(v).where(*where).subquery("cur")

    def _parts(self, tx: int | None) -> tuple[sa.Subquery, sa.FromClause, Any, list[Any]]:
        cur = self.current(tx)
        on = _same_key([live for live, _v in self.keys], [cur.c[v.key] for _l, v in self.keys])
        joined = self.live.outerjoin(cur, sa.and_(*on))
        missing = sa.or_(cur.c[self.keys[0][1].key].is_(None), cur.c[self.op] == Operation.DELETE)
        live_row = (
            sa.select(sa.literal(1))
            .select_from(self.live)
            .where(
                *_same_key([live for live, _v in self.keys], [cur.c[v.key] for _l, v in self.keys])
            )
        )
        gone = [cur.c[self.op] != Operation.DELETE, ~sa.exists(live_row)]
        return cur, joined, missing, gone

    def live_count(self, session: Session) -> int:
        return _count(session, self.live)

    def count(self, session: Session) -> tuple[int, int, int, int]:
        cur, joined, missing, gone = self._parts(None)
        created = _count(session, joined, missing)
        deleted = _count(session, cur, *gone)
        return created, 0, deleted, self.live_count(session) - created

    def probe(self, session: Session) -> Needed:
        cur, joined, missing, gone = self._parts(None)
        return Needed(
            changed=_exists(session, sa.select(sa.literal(1)).select_from(joined).where(missing)),
            gone=_exists(session, sa.select(sa.literal(1)).select_from(cur).where(*gone)),
        )

    def write(self, session: Session, tx: int, options: ImportOptions, needed: Needed) -> Counts:
        cur, joined, missing, gone = self._parts(tx)
        literal_tx = sa.literal(tx, sa.BigInteger)
        created = deleted = 0
        if options.create and needed.changed:
            internal = [self.versions.c[self.tx], self.versions.c[self.op]]
            names = [v for _l, v in self.pairs] + internal
            rows = (
                sa.select(
                    *(live for live, _v in self.pairs),
                    literal_tx,
                    sa.literal(Operation.INSERT, sa.SmallInteger),
                )
                .select_from(joined)
                .where(missing)
            )
            created = _rowcount(session, sa.insert(self.versions).from_select(names, rows))
        if options.delete and needed.gone:
            internal = [self.versions.c[self.tx], self.versions.c[self.op]]
            names = [v for _l, v in self.delete_columns] + internal
            rows = sa.select(
                *(cur.c[v.key] for _l, v in self.delete_columns),
                literal_tx,
                sa.literal(Operation.DELETE, sa.SmallInteger),
            ).where(*gone)
            deleted = _rowcount(session, sa.insert(self.versions).from_select(names, rows))
        return Counts(
            created=created, deleted=deleted, unchanged=self.live_count(session) - created
        )

    def entities(self, session: Session, tx: int) -> set[str]:
        return set()  # Continuum's TransactionChanges records model classes only

    def repair(self, session: Session) -> int:
        return 0


Unit = VersionModel | AssociationVersions


# --- choosing the units of a run ------------------------------------------------------------


def is_versioned(cls: type) -> bool:
    return getattr(cls, "__versioned__", None) is not None


def unsupported_plugins(manager: Any) -> list[str]:
    """The plugins of a versioning manager whose effect on a flush the import cannot
    reproduce: those that hook into the writing of version objects or tables."""
    found = []
    for plugin in manager.plugins:
        if isinstance(plugin, SUPPORTED_PLUGINS):
            continue
        kind = type(plugin)
        if kind.__module__ == "sqlalchemy_continuum.plugins.flask":
            continue  # transaction_args only: honoured through Continuum's own call
        hooks = [h for h in ROW_HOOKS if getattr(kind, h, None) is not getattr(Plugin, h)]
        if hooks:
            found.append(f"plugin {kind.__name__} (hooks {', '.join(hooks)})")
    return found


def refuse_plugins(classes: Sequence[type], models: Sequence[type]) -> None:
    """Refuse a run whose models' manager has a plugin the import cannot reproduce.
    `make_versioned()` installs plugins manager-wide, for every versioned model: naming
    models cannot avoid one, so the error names them all and says so."""
    managers = {id(m): m for m in map(get_versioning_manager, models)}
    for manager in managers.values():
        found = unsupported_plugins(manager)
        if not found:
            continue
        affected = sorted(
            c.__name__ for c in classes if is_versioned(c) and get_versioning_manager(c) is manager
        )
        raise UnsupportedVersioning(
            f"the version import cannot reproduce what Continuum writes for "
            f"{', '.join(affected)}: {'; '.join(found)}. Plugins of make_versioned() apply to "
            "every versioned model, so no model can be imported, not by name either, while "
            "the app installs it; nothing was imported"
        )


def _table_owner(cls: type) -> type:
    """The class whose table `cls` uses (itself, unless single-table inheritance)."""
    mapper = sa.inspect(cls)
    while mapper.single and mapper.inherits is not None:
        mapper = mapper.inherits
    return mapper.class_


def select_models(classes: Sequence[type], names: Sequence[str] | None = None) -> list[type]:
    """The versioned models among `classes` (or the `names`d ones), in name order."""
    versioned = {c.__name__: c for c in classes if is_versioned(c)}
    if names is None:
        return [versioned[n] for n in sorted(versioned)]
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ValidationError(f"models={names!r} must be a list of model names (or None for all)")
    if not names:
        raise ValidationError(
            f"models={names!r} names no model; pass None to import every versioned model"
        )
    chosen: list[type] = []
    for name in names:
        if not isinstance(name, str):
            raise ValidationError(f"models: {name!r} is not a model name (a string)")
        if name not in versioned:
            raise NotFoundError(
                f"unknown versioned model {name!r}; valid names: "
                f"{', '.join(sorted(versioned)) or '(none configured)'}"
            )
        if versioned[name] not in chosen:
            chosen.append(versioned[name])
    return chosen


def _association_units(cls: type, dialect: sa.Dialect) -> list[AssociationVersions]:
    manager = get_versioning_manager(cls)
    units = []
    for prop in sa.inspect(cls).relationships:
        table = prop.secondary
        if table is None or prop.viewonly or table not in manager.association_tables:
            continue
        if manager.is_excluded_property(cls, prop.key):
            continue
        name = manager.options["table_name"] % table.name
        schema = table.schema or table.metadata.schema
        versions = table.metadata.tables.get(f"{schema}.{name}" if schema else name)
        if versions is not None:
            units.append(AssociationVersions(table, versions, prop, manager, dialect))
    return units


def plan_units(
    classes: Sequence[type], names: Sequence[str] | None, dialect: sa.Dialect
) -> list[Unit]:
    """The units a run imports, parents first (foreign keys), each once; refuses, naming
    model and feature, any unit whose Continuum set-up the import cannot reproduce (a
    plugin: every model, see `refuse_plugins`)."""
    models = select_models(classes, names)
    refuse_plugins(classes, models)
    units: dict[Any, Unit] = {}
    for cls in models:
        owner = _table_owner(cls)
        if owner not in units:
            units[owner] = VersionModel(owner, dialect)
        for assoc in _association_units(owner, dialect):
            units.setdefault(assoc.live, assoc)
    refused = {}
    for unit in units.values():
        found = unit.unsupported()
        if found:
            refused[unit.name] = found
    if refused:
        detail = "; ".join(f"{name}: {', '.join(found)}" for name, found in refused.items())
        others = sorted(
            {c.__name__ for c in classes if is_versioned(c)}
            - {c.__name__ for u in units.values() if u.name in refused for c in u.classes}
            - set(refused)
        )
        raise UnsupportedVersioning(
            f"the version import cannot reproduce what Continuum writes for {detail}; "
            "nothing was imported"
            + (f" (other models can be imported by name: {', '.join(others)})" if others else "")
        )
    for unit in units.values():
        if isinstance(unit, VersionModel):
            unit.set_partition()

    def anchor(unit: Unit) -> sa.Table:
        return unit.live if isinstance(unit, AssociationVersions) else unit.levels[-1].live

    by_table = {anchor(u): u for u in sorted(units.values(), key=lambda u: u.name)}
    return [by_table[t] for t in sa.sql.util.sort_tables(list(by_table))]


# --- the run ------------------------------------------------------------------------------


def _check_text(name: str, value: Any, limit: int) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name}={shown(value)} must be a string or None")
    if value is not None and "\x00" in value:
        raise ValidationError(f"{name}={shown(value)} contains a NUL character")
    if value is not None and len(value) > limit:
        raise ValidationError(f"{name}={value[:60]!r}... is longer than {limit} characters")


def import_versions(
    session: Session,
    model_classes: Sequence[type],
    *,
    names: Sequence[str] | None = None,
    user: str | None = None,
    remote_addr: str | None = None,
    comment: str | None = None,
    dry_run: bool = False,
    create: bool = True,
    update: bool = True,
    delete: bool = True,
    max_changes: int | None = None,
    repair: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Bring the version tables of `model_classes` (or the `names`d ones) in line with
    their live tables, in `session`'s transaction, which must not have begun yet.

    The caller commits (or, on any error, rolls back): the run is all-or-nothing only
    together with that. Bad input raises `ValidationError`/`NotFoundError` before anything
    is written, an unsupported Continuum set-up `UnsupportedVersioning`; `LockedError`
    when another import is running.
    """
    options = ImportOptions(create, update, delete, dry_run, max_changes)
    _check_text("user", user, USER_MAX)
    _check_text("remote_addr", remote_addr, REMOTE_ADDR_MAX)
    _check_text("comment", comment, COMMENT_MAX)
    if not isinstance(repair, bool):
        raise ValidationError(f"repair={repair!r} must be true or false")
    versioned = [c for c in model_classes if is_versioned(c)]
    if not versioned:
        select_models(model_classes, names)  # names given: the same errors as ever
        return ImportResult(None, dry_run, {}, ["no versioned models configured"])
    dialect = session.get_bind(mapper=versioned[0]).dialect
    units = plan_units(model_classes, names, dialect)
    first = (
        next(u.cls for u in units if isinstance(u, VersionModel))
        if any(isinstance(u, VersionModel) for u in units)
        else versioned[0]
    )
    run = RunTransaction(session, get_versioning_manager(first), user, remote_addr, comment)
    begin_import(session, mapper=first)
    run.check()
    planned: dict[sa.Table, list[str]] = {}  # each table once, the columns plans use
    for unit in units:
        for table, names in unit.planned_columns().items():
            planned.setdefault(table, []).extend(names)
    refresh_stale_statistics(session, planned)
    for unit in units:
        unit.prepare(session, repair)
        if repair and getattr(unit, "several_open", False):
            unit.repaired = unit.extra_open if dry_run else unit.repair(session)
    notify = progress or (lambda _event: None)
    if progress is not None:  # the rows each model will check, for progress bars and ETA
        notify({"stage": "planned", "rows": {u.name: u.live_count(session) for u in units}})
    total = len(units)
    models: dict[str, Counts] = {}
    changed: list[Unit] = []
    if options.writes_everything:
        for index, unit in enumerate(units, 1):
            step = {"model": unit.name, "index": index, "total": total}
            notify({**step, "stage": "checking"})
            needed = unit.probe(session)
            if needed:
                counts = unit.write(session, run.begin(), options, needed)
                changed.append(unit)
            else:
                counts = Counts(unchanged=unit.live_count(session))
            models[unit.name] = counts
            notify({**step, "stage": "done", **counts.as_dict()})
    else:
        for index, unit in enumerate(units, 1):
            step = {"model": unit.name, "index": index, "total": total}
            notify({**step, "stage": "checking"})
            models[unit.name] = switched(*unit.count(session), options)
            notify({**step, "stage": "counted", **models[unit.name].as_dict()})
        changes = sum(c.changes for c in models.values())
        if options.max_changes is not None and changes > options.max_changes:
            detail = ", ".join(f"{n}: {c.changes}" for n, c in models.items() if c.changes)
            raise ChangeLimitExceeded(
                f"the import would write {changes} changes ({detail}), more than "
                f"max_changes={options.max_changes}; nothing was written"
            )
        if not dry_run:
            for index, unit in enumerate(units, 1):
                counted = models[unit.name]
                if counted.changes:
                    needed = Needed(changed=counted.created + counted.updated > 0,
                                    gone=counted.deleted > 0)  # fmt: skip
                    written = unit.write(session, run.begin(), options, needed)
                    if (written.created, written.updated, written.deleted) != (
                        counted.created, counted.updated, counted.deleted,
                    ):  # fmt: skip  # one snapshot makes this impossible
                        raise RuntimeError(
                            f"{unit.name}: counted {counted.as_dict()}, wrote {written.as_dict()}"
                        )
                    changed.append(unit)
                notify({"model": unit.name, "index": index, "total": total, "stage": "done",
                        **counted.as_dict()})  # fmt: skip
    if run.txn is not None:
        tx = run.begin()
        run.record_changes({name for unit in changed for name in unit.entities(session, tx)})
    if run.txn is not None or any(u.repaired for u in units):
        session.flush()
    return ImportResult(
        transaction_id=run.id,
        dry_run=dry_run,
        models=models,
        warnings=[w for u in units for w in u.warnings],
        repaired={u.name: u.repaired for u in units},
        inconsistent={u.name: u.inconsistent for u in units if u.inconsistent},
    )
