"""Automatic invalidation: the app's own ORM writes invalidate the cached tables by
themselves, in the writer's transaction, with no `publish()` call.

    from cache.invalidation import track
    tracking = track(SessionFactory, runtime)   # once, at start-up; imports no Celery

After that, every transaction of a session made by `SessionFactory` (a `sessionmaker`, a
`Session` subclass or instance, or a `scoped_session`) whose flushes insert, update or
delete rows of a table a cached table reads writes, as it commits, one outbox row per
affected cached table: the event exists if and only if the change commits. ORM-enabled bulk
statements run through the session (`session.execute(update(Model).where(...))`,
`delete(...)`, `insert(Model)` with parameter lists) are caught by `do_orm_execute`: keys
come from `RETURNING` (added as `return_defaults`, so the caller's result and `rowcount`
are unchanged) where the database has it, else the whole cached table is invalidated.
Core INSERT/UPDATE/DELETE statements run on a tracked session's own connection
(`session.connection().execute(update(table)...)`) are caught the same way, by the
engine's `before_execute`/`after_execute`. Writes this cannot see (raw SQL, other
programs, legacy `bulk_*_mappings`) need the PostgreSQL triggers
(`cache.invalidation.triggers`, `cachework triggers install`).

What a cached table depends on (`Dependency`): by default it is derived from the cached
table's source select. The table its primary-key column is selected from is a keyed
dependency: a written row of that table invalidates the cached primary keys equal to the
row's old and new values of that column. Every other table the select reads (joins,
subqueries, aliases) invalidates the whole cached table. A module named in
`CACHEWORK_CACHED_TABLES` may replace that with `DEPENDS_ON = {cached table: {base table:
base column or None}}`.

Events name primary keys only. An index value change needs no extra key: the old and the
new index value belong to the same row, so to the same cached primary key; invalidating
that key makes the refresh delete the stored record (and with it its entries under the
old value) and load the row by primary key (its entries under the new value), and an
invalidation by primary key marks the table's other indexes dirty, so reads by old or new
value refresh first. Where the cached primary key is itself a non-key base column (a table
cached by `code`), the event names both its old and its new value.
"""

from __future__ import annotations

import importlib
import logging
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.orm.base import LoaderCallableStatus
from sqlalchemy.sql.util import find_tables

from cache.invalidation import outbox
from cache.invalidation.events import Event, validate_event
from cachework.errors import ConfigError, ValidationError
from cachework.schema import invalidation_outbox

log = logging.getLogger(__name__)
WHOLE = None  # a cached table's keys when every record must go


@dataclass(frozen=True)
class Dependency:
    """A write to a row of `base` invalidates cached table `cached`: the cached primary
    keys equal to the row's old and new `column` values, or every record when `column`
    is None."""

    cached: str
    base: str
    column: str | None = None


# --- which base tables a cached table reads ------------------------------------------------


def source_dependencies(name: str, table: Any) -> list[Dependency]:
    """What cached table `name` (a CachedTable or FullTableCache) depends on, derived from
    its source select (see the module docstring)."""
    inner = getattr(table, "table", table)  # FullTableCache wraps a CachedTable
    select = inner.source.select
    key = _base_column(select.selected_columns.get(inner.primary_key.column))
    found = find_tables(select, include_aliases=True)
    aliased = {
        f.element.fullname
        for f in found
        if isinstance(f, sa.Alias) and isinstance(f.element, sa.Table)
    }
    deps: dict[str, Dependency] = {}
    for base in found:
        if not isinstance(base, sa.Table) or base.fullname in deps:
            continue
        column = None
        if key is not None and key.table is base and base.fullname not in aliased:
            column = key.name
        deps[base.fullname] = Dependency(name, base.fullname, column)
    return list(deps.values())


def _base_column(expr: Any) -> sa.Column | None:
    while isinstance(expr, sa.Label):
        expr = expr.element
    if isinstance(expr, sa.Column) and isinstance(expr.table, sa.Table):
        return expr
    return None


def declared_dependencies(modules: Iterable[str], names: Iterable[str]) -> dict[str, list]:
    """`DEPENDS_ON` of the cached-table modules: cached name -> [Dependency]."""
    names = set(names)
    out: dict[str, list[Dependency]] = {}
    for module_name in modules:
        declared = getattr(importlib.import_module(module_name), "DEPENDS_ON", None)
        if declared is None:
            continue
        if not isinstance(declared, Mapping):
            raise ConfigError(f"{module_name}.DEPENDS_ON must be a dict, not {declared!r}")
        for cached, bases in declared.items():
            if cached not in names:
                raise ConfigError(
                    f"{module_name}.DEPENDS_ON names {cached!r}, which is not a declared "
                    f"cached table (declared: {sorted(names)})"
                )
            out[cached] = list(_dependencies_from({cached: bases}))
    return out


def dependencies(source: Any) -> tuple[Dependency, ...]:
    """The dependencies of `source`: a runtime (its declared cached tables, derived from
    their sources unless `DEPENDS_ON` says otherwise), a mapping `{cached: {base: column or
    None}}`, or Dependency objects."""
    registry = getattr(source, "registry", None)
    settings = getattr(source, "settings", None)
    if registry is not None and settings is not None:
        names = registry.names()
        declared = declared_dependencies(settings.cached_tables, names)
        deps: list[Dependency] = []
        for name in names:
            if name in declared:
                deps.extend(declared[name])
            else:
                deps.extend(source_dependencies(name, registry.table(name)))
        return tuple(deps)
    return tuple(_dependencies_from(source))


def _dependencies_from(source: Any) -> Iterable[Dependency]:
    if isinstance(source, Mapping):
        for cached, bases in source.items():
            if isinstance(bases, str):
                bases = {bases: None}
            if not isinstance(bases, Mapping):
                raise ConfigError(
                    f"dependencies of {cached!r} must be a dict of base table -> base column "
                    f"(or None for the whole table), not {bases!r}"
                )
            for base, column in bases.items():
                yield _check(Dependency(cached, base, column))
        return
    for dep in source:
        if not isinstance(dep, Dependency):
            raise ConfigError(f"{dep!r} is not a Dependency")
        yield _check(dep)


def _check(dep: Dependency) -> Dependency:
    for field_name in ("cached", "base"):
        value = getattr(dep, field_name)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"dependency {field_name}={value!r} must be a table name")
    if dep.column is not None and (not isinstance(dep.column, str) or not dep.column):
        raise ConfigError(f"dependency column={dep.column!r} must be a column name or None")
    return dep


# --- collecting keys ------------------------------------------------------------------------


class _Keys:
    """Keys per cached table for one transaction (None: the whole table)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.by_table: dict[str, dict | None] = {}

    def whole(self, cached: str) -> None:
        self.by_table[cached] = WHOLE

    def add(self, cached: str, value: Any) -> None:
        keys = self.by_table.setdefault(cached, {})
        if keys is WHOLE:
            return
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | str | uuid.UUID | Decimal):
            self.by_table[cached] = WHOLE  # not a key an event can carry: never silent
            return
        keys[value] = None
        if len(keys) > self.max_keys:  # a whole-table event anyway: stop collecting
            self.by_table[cached] = WHOLE

    def merge(self, other: _Keys) -> None:
        for cached, keys in other.by_table.items():
            if keys is WHOLE:
                self.whole(cached)
                continue
            for value in keys:
                self.add(cached, value)

    def events(self) -> list[Event]:
        max_keys = self.max_keys
        out = []
        for cached, keys in self.by_table.items():
            if keys is not WHOLE and not keys:
                continue
            if keys is WHOLE or len(keys) > max_keys:
                out.append(Event(cached))
                continue
            try:
                out.append(validate_event(cached, list(keys), max_keys=max_keys))
            except ValidationError as exc:
                log.warning("invalidating all of %s: %s", cached, exc)
                out.append(Event(cached))
        return out


@dataclass
class _Plan:
    """How one mapped table's rows turn into keys (per mapper, made once)."""

    attrs: frozenset[str]  # attribute keys of this table's columns
    keyed: list[tuple[str, str | None, int | None]]  # (cached, attribute, pk position)
    whole: list[str]  # cached tables invalidated whole by any write


@dataclass
class Tracking:
    """The listeners `track()` installed, with counters; `stop()` removes them.

    Flushes and statements only collect keys, held on the connection of the session's
    transaction; its commit writes them: one outbox row per cached table, however many
    flushes the transaction had. On psycopg (3) the row travels in the same round trip as
    the COMMIT, so tracking adds no round trip to a transaction. A rollback drops them; a
    rollback to a savepoint keeps them (invalidating a row that did not change is
    harmless). A connection in AUTOCOMMIT writes at once, as each statement commits by
    itself, and a two-phase transaction writes before its PREPARE.

    Once the rows are committed, before the session's `commit()` returns, they go to
    `outbox.committed`: this process's started runtimes invalidate them in their own
    cached tables (read-your-writes), and the rows are relayed to the log by id.
    """

    deps: tuple[Dependency, ...]
    max_keys: int = 10_000
    stats: dict[str, int] = field(
        default_factory=lambda: {"flushes": 0, "statements": 0, "events": 0, "whole_table": 0}
    )

    def __post_init__(self) -> None:
        self.by_base: dict[str, list[Dependency]] = {}
        for dep in self.deps:
            self.by_base.setdefault(dep.base, []).append(dep)
        self._plans: dict[orm.Mapper, list[_Plan]] = {}
        self._plans_lock = threading.Lock()
        self._targets: list[Any] = []
        self._engines: set[sa.Engine] = set()
        self._held = ("cachework.tracking", id(self))  # this Tracking's keys in conn.info
        self._session_of = ("cachework.tracking.session", id(self))  # conn.info: sessions
        # This thread's commits whose rows await the session's after_commit, the
        # statement being run with RETURNING added, and whether an ORM statement runs.
        self._local = threading.local()

    # --- installing -----------------------------------------------------------------------

    def attach(self, target: Any) -> Tracking:
        ok = isinstance(target, orm.Session | orm.sessionmaker | orm.scoped_session) or (
            isinstance(target, type) and issubclass(target, orm.Session)
        )
        if not ok:
            raise ConfigError(
                f"track() needs a Session, sessionmaker, scoped_session or Session class, "
                f"not {target!r}"
            )
        bind = _bind_of(target)
        if bind is not None:
            check_engine(bind)
        for name, listener in self._session_listeners():
            sa.event.listen(target, name, listener)
        self._targets.append(target)
        return self

    def _session_listeners(self) -> list[tuple[str, Any]]:
        return [
            ("after_flush", self._after_flush),
            ("do_orm_execute", self._do_orm_execute),
            ("after_begin", self._after_begin),
            ("after_commit", self._after_commit),
            ("after_transaction_end", self._after_transaction_end),
        ]

    def stop(self) -> None:
        """Remove the session listeners (sessions already open stop tracking too). The
        engines' transaction listeners stay, so a transaction under way still writes
        what it collected; with nothing collected they do nothing."""
        for target in self._targets:
            for name, listener in self._session_listeners():
                sa.event.remove(target, name, listener)
        self._targets = []

    def _hook(self, engine: sa.Engine) -> None:
        """Listen to `engine`'s transactions, once per engine: at first use (a session's
        first transaction on it, before any write), as a session factory does not say
        which engines its sessions will use."""
        if engine in self._engines:
            return
        check_engine(engine)
        with self._plans_lock:
            if engine in self._engines:
                return
            sa.event.listen(engine, "begin", self._drop)
            sa.event.listen(engine, "rollback", self._drop)
            sa.event.listen(engine, "commit", self._on_commit)
            sa.event.listen(engine, "prepare_twophase", self._on_prepare)
            sa.event.listen(engine, "before_execute", self._before_execute, retval=True)
            sa.event.listen(engine, "after_execute", self._after_execute)
            self._engines.add(engine)

    # --- the session's transaction ---------------------------------------------------------

    def _after_begin(self, session: orm.Session, _transaction: Any, conn: sa.Connection) -> None:
        """Mark `conn` as a tracked session's, so Core statements run on it are tracked too."""
        self._hook(conn.engine)
        sessions = conn.info.get(self._session_of)
        if sessions is None:
            sessions = conn.info[self._session_of] = weakref.WeakSet()
        sessions.add(session)

    def _after_commit(self, _session: orm.Session) -> None:
        done, self._local.done = getattr(self._local, "done", None), None
        for engine, rows in done or ():
            outbox.committed(engine, rows)

    def _after_transaction_end(self, _session: orm.Session, transaction: Any) -> None:
        if transaction.parent is None:  # rolled back (a commit took its rows already)
            self._local.done = None

    # --- flushes ----------------------------------------------------------------------------

    def _plans_for(self, mapper: orm.Mapper) -> list[_Plan]:
        plans = self._plans.get(mapper)
        if plans is not None:
            return plans
        plans = []
        for table in mapper.tables:
            deps = self.by_base.get(table.fullname)
            if not deps:
                continue
            attrs = frozenset(a for a in (_attr(mapper, c) for c in table.columns) if a)
            keyed, whole = [], []
            for dep in deps:
                column = table.c.get(dep.column) if dep.column is not None else None
                attr = _attr(mapper, column) if column is not None else None
                if attr is None:
                    whole.append(dep.cached)
                    continue
                position = next(
                    (i for i, pk in enumerate(mapper.primary_key) if _attr(mapper, pk) == attr),
                    None,
                )
                keyed.append((dep.cached, attr, position))
            plans.append(_Plan(attrs, keyed, whole))
        with self._plans_lock:
            self._plans[mapper] = plans
        return plans

    def _after_flush(self, session: orm.Session, _context: Any) -> None:
        keys = _Keys(self.max_keys)
        for kind, objects in (("new", session.new), ("dirty", session.dirty)):
            for obj in objects:
                self._collect(keys, sa.inspect(obj), kind)
        for obj in session.deleted:
            self._collect(keys, sa.inspect(obj), "deleted")
        if keys.by_table:
            self.stats["flushes"] += 1
            self._keep(session.connection(), keys)

    def _collect(self, keys: _Keys, state: orm.InstanceState, kind: str) -> None:
        plans = self._plans_for(state.mapper)
        if not plans:
            return
        committed = state.committed_state
        values = state.dict
        for plan in plans:
            if kind == "dirty" and plan.attrs.isdisjoint(committed):
                continue  # no column of this table changed: no UPDATE of its row
            for cached in plan.whole:
                keys.whole(cached)
            for cached, attr, position in plan.keyed:
                if kind == "new":
                    current = values.get(attr, LoaderCallableStatus.NO_VALUE)
                    _add(keys, cached, current, state, position)
                    continue
                old = committed.get(attr, values.get(attr, LoaderCallableStatus.NO_VALUE))
                _add(keys, cached, old, state, position, identity=True)
                if kind == "dirty" and attr in committed:
                    current = values.get(attr, LoaderCallableStatus.NO_VALUE)
                    _add(keys, cached, current, state, None)

    # --- writing, at commit ------------------------------------------------------------

    def _keep(self, conn: sa.Connection, keys: _Keys) -> None:
        """Hold `keys` for `conn`'s transaction until it commits."""
        if conn._is_autocommit_isolation():  # each statement commits by itself: write now
            self._write(conn, keys, then_commit=False)
            return
        self._hook(conn.engine)
        held = conn.info.get(self._held)
        if held is None:
            conn.info[self._held] = keys
        else:
            held.merge(keys)

    def _drop(self, conn: sa.Connection) -> None:
        conn.info.pop(self._held, None)
        conn.info.pop(self._session_of, None)  # a session's after_begin marks it again

    def _on_commit(self, conn: sa.Connection) -> None:
        conn.info.pop(self._session_of, None)
        keys = conn.info.pop(self._held, None)
        if keys is not None:
            self._write(conn, keys, then_commit=True)

    def _on_prepare(self, conn: sa.Connection, _xid: Any) -> None:
        keys = conn.info.pop(self._held, None)  # nothing can be written after PREPARE
        if keys is not None:
            self._write(conn, keys, then_commit=False)

    def _write(self, conn: sa.Connection, keys: _Keys, *, then_commit: bool) -> None:
        events = keys.events()
        if not events:
            return
        self.stats["events"] += len(events)
        self.stats["whole_table"] += sum(1 for e in events if e.keys is None)
        datas = [e.to_json() for e in events]
        if then_commit and conn.dialect.driver == "psycopg" and not conn.dialect.is_async:
            ids = _insert_then_commit(conn, datas)
        else:  # one statement per row: an executemany with RETURNING is not everywhere
            insert = invalidation_outbox.insert().returning(invalidation_outbox.c.id)
            ids = [conn.execute(insert, {"data": data}).scalar_one() for data in datas]
        rows = list(zip(ids, datas, strict=True))
        if conn._is_autocommit_isolation():  # committed already: tell the process now
            outbox.committed(conn.engine, rows)
            return
        done = getattr(self._local, "done", None)
        if done is None:
            done = self._local.done = []
        done.append((conn.engine, rows))  # the session's after_commit takes them

    # --- statements: ORM-enabled ones and Core ones on a tracked session's connection ---

    def _plan(
        self, statement: Any, params: Any, mapper: Any, dialect: sa.Dialect
    ) -> tuple[_Keys, list[tuple[str, sa.Column]], Any] | None:
        """Keys of an INSERT/UPDATE/DELETE of a table cached tables read, before it runs:
        (keys known now, (cached, column) pairs to read from its RETURNING, the statement
        to run: with those columns added as `return_defaults`, so the caller's result is
        unchanged). None: no cached table reads its table."""
        if not isinstance(statement, sa.Insert | sa.Update | sa.Delete):
            return None
        target = getattr(statement, "table", None)
        deps = self.by_base.get(getattr(target, "fullname", None))
        if not deps:
            return None
        self.stats["statements"] += 1
        keys = _Keys(self.max_keys)
        is_insert = isinstance(statement, sa.Insert)
        many = isinstance(params, list) and params and isinstance(params[0], Mapping)
        if is_insert or many:
            rows = params if many else None
            if is_insert and getattr(statement, "_post_values_clause", None) is not None:
                rows = None  # an upsert may change rows other than the ones it names
            for dep in deps:
                names = _names(dep, target, mapper, pk_only=not is_insert)
                if rows is None or names is None:
                    keys.whole(dep.cached)
                    continue
                for row in rows:
                    value = next((row[n] for n in names if n in row), LoaderCallableStatus.NO_VALUE)
                    if value is LoaderCallableStatus.NO_VALUE:
                        keys.whole(dep.cached)
                        break
                    keys.add(dep.cached, value)
            return keys, [], statement
        is_update = isinstance(statement, sa.Update)
        can_return = dialect.update_returning if is_update else dialect.delete_returning
        set_columns = _set_columns(statement) if is_update else set()
        keyed: list[tuple[str, sa.Column]] = []
        for dep in deps:
            column = target.c.get(dep.column) if dep.column is not None else None
            if (
                column is None
                or not can_return
                or statement._returning
                or statement._return_defaults
                or set_columns is None
                or column.key in set_columns
            ):
                keys.whole(dep.cached)  # old keys unknowable from RETURNING
            else:
                keyed.append((dep.cached, column))
        if keyed:
            columns = list(dict.fromkeys(column for _cached, column in keyed))
            statement = statement.return_defaults(*columns, supplemental_cols=columns)
        return keys, keyed, statement

    @staticmethod
    def _returned(keys: _Keys, keyed: list[tuple[str, sa.Column]], result: Any) -> None:
        rows = getattr(result, "returned_defaults_rows", None)
        for cached, column in keyed:
            if rows is None:
                keys.whole(cached)
                continue
            for row in rows:
                keys.add(cached, row._mapping[column])

    def _do_orm_execute(self, state: orm.ORMExecuteState) -> Any:
        if not (state.is_update or state.is_delete or state.is_insert):
            return None
        bind = state.session.get_bind(mapper=state.bind_mapper, clause=state.statement)
        plan = self._plan(state.statement, state.parameters, state.bind_mapper, bind.dialect)
        if plan is None:
            return None
        keys, keyed, statement = plan
        self._local.in_orm = getattr(self._local, "in_orm", 0) + 1
        try:  # its Core form on the connection is this statement: not tracked twice
            if statement is state.statement:
                result = state.invoke_statement()
            else:
                result = state.invoke_statement(statement=statement)
        finally:
            self._local.in_orm -= 1
        self._returned(keys, keyed, result)
        if keys.by_table:
            self._keep(state.session.connection(), keys)
        return result

    def _before_execute(
        self, conn: sa.Connection, clause: Any, multiparams: Any, params: Any, options: Any
    ) -> tuple[Any, Any, Any]:
        """A Core INSERT/UPDATE/DELETE run on a tracked session's connection
        (`session.connection().execute(update(table)...)`): tracked like an ORM one."""
        sessions = conn.info.get(self._session_of)
        if (
            not sessions
            or getattr(self._local, "in_orm", 0)
            # A flush's own statements (Continuum's version session shares the
            # connection, flushing inside the app's flush): after_flush has them.
            or any(session._flushing for session in sessions)
            or not isinstance(clause, sa.Insert | sa.Update | sa.Delete)
        ):
            return clause, multiparams, params
        rows = list(multiparams) if multiparams else ([params] if params else [])
        # Parameter rows name the keys of an INSERT or an executemany; otherwise RETURNING
        many = rows if rows and (len(rows) > 1 or isinstance(clause, sa.Insert)) else None
        plan = self._plan(clause, many, None, conn.dialect)
        if plan is None:
            return clause, multiparams, params
        keys, keyed, statement = plan
        if keyed:
            self._local.running = (statement, keys, keyed)
        elif keys.by_table:
            self._keep(conn, keys)
        return statement, multiparams, params

    def _after_execute(
        self, conn: sa.Connection, clause: Any, _multi: Any, _params: Any, _opts: Any, result: Any
    ) -> None:
        running = getattr(self._local, "running", None)
        if running is None or running[0] is not clause:
            return
        self._local.running = None
        _statement, keys, keyed = running
        self._returned(keys, keyed, result)
        if keys.by_table:
            self._keep(conn, keys)


SUPPORTED = ("postgresql", "sqlite")  # where cachework's outbox lives


def check_engine(engine: Any) -> None:
    """Refuse an engine tracking cannot serve, before any write: its commit would have to
    write an outbox row there (and fail, costing the app its write)."""
    engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine: its sync facade
    dialect = getattr(engine, "dialect", None)
    if dialect is None or dialect.name not in SUPPORTED:
        raise ConfigError(
            f"track() cannot serve {getattr(dialect, 'name', engine)!r} "
            f"(driver {getattr(dialect, 'driver', None)!r}): the outbox lives in PostgreSQL "
            "or SQLite; use publish(..., log=...) after the commit instead"
        )


def _bind_of(target: Any) -> Any:
    """The engine a session factory or session is bound to, when it says (else None)."""
    if isinstance(target, orm.scoped_session):
        target = target.session_factory
    if isinstance(target, orm.sessionmaker):
        return target.kw.get("bind")
    if isinstance(target, orm.Session):
        return target.bind
    return None


def _insert_then_commit(conn: sa.Connection, rows: list[str]) -> list[int]:
    """psycopg (3): send the outbox INSERT and the COMMIT as one simple query, one round
    trip instead of two; returns the rows' ids. The server commits; the driver's
    `commit()`, which SQLAlchemy calls next, finds the connection idle and sends nothing.
    If the INSERT fails, the COMMIT does not run: the commit fails and the transaction
    rolls back whole."""
    from psycopg import sql

    raw = conn.connection.dbapi_connection
    table = conn.dialect.identifier_preparer.format_table(invalidation_outbox)
    values = ", ".join(f"({sql.Literal(row).as_string(raw)})" for row in rows)
    query = f"INSERT INTO {table} (data) VALUES {values} RETURNING id; COMMIT"
    result = conn.exec_driver_sql(query, execution_options={"no_parameters": True})
    return [row[0] for row in result]  # ('%' above is literal: no parameters)


def _add(
    keys: _Keys,
    cached: str,
    value: Any,
    state: orm.InstanceState,
    position: int | None,
    identity: bool = False,
) -> None:
    if isinstance(value, LoaderCallableStatus):
        if identity and position is not None and state.key is not None:
            keys.add(cached, state.key[1][position])  # the row's primary key, as loaded
        else:
            keys.whole(cached)  # a value never loaded: cannot name the key
        return
    keys.add(cached, value)


def _attr(mapper: orm.Mapper, column: sa.Column) -> str | None:
    """The attribute key `mapper` maps `column` to, or None."""
    try:
        return mapper.get_property_by_column(column).key
    except orm.exc.UnmappedColumnError:
        return None


def _names(dep: Dependency, target: Any, mapper: Any, *, pk_only: bool) -> tuple | None:
    """Parameter names that carry `dep.column` in a bulk statement's rows (None: none can)."""
    if dep.column is None:
        return None
    column = target.c.get(dep.column)
    if column is None:
        return None
    names = [column.key]
    attr = _attr(mapper, column) if mapper is not None else None
    if attr is not None:
        names.insert(0, attr)
        if pk_only and not any(column is pk for pk in mapper.local_table.primary_key):
            return None  # bulk UPDATE by primary key: other columns' old values are unknown
    elif pk_only and not column.primary_key:
        return None
    return tuple(names)


def _set_columns(statement: Any) -> set[str] | None:
    """Keys of the columns an UPDATE sets (None: cannot tell)."""
    values = getattr(statement, "_values", None)
    ordered = getattr(statement, "_ordered_values", None)
    if getattr(statement, "_multi_values", None):
        return None
    pairs = list(values.keys()) if values else []
    if ordered:
        pairs.extend(k for k, _v in ordered)
    out = set()
    for key in pairs:
        if isinstance(key, str):
            out.add(key)
        else:
            name = getattr(key, "key", None)
            if not isinstance(name, str):
                return None
            out.add(name)
    return out


def track(target: Any, tables: Any, *, max_keys: int | None = None) -> Tracking:
    """Make every flush and ORM-enabled DML statement of `target`'s sessions write its
    invalidations into the outbox, in the writer's transaction.

    `target`: a `sessionmaker`, `Session` class or instance, or `scoped_session`.
    `tables`: a runtime (the declared cached tables), a mapping `{cached: {base table:
    base column or None}}`, or `Dependency` objects. `max_keys`: more keys than this in
    one event invalidate the whole cached table (default: the runtime's
    CACHEWORK_INVALIDATION_MAX_KEYS, else 10,000). Returns the `Tracking`; `stop()` it to
    remove the listeners."""
    if max_keys is None:
        settings = getattr(tables, "settings", None)
        max_keys = getattr(settings, "invalidation_max_keys", 10_000)
    if callable(getattr(tables, "apply_committed", None)):  # a runtime: read-your-writes
        outbox.add_sink(tables)  # its log is where `outbox.committed` relays to
    return Tracking(dependencies(tables), max_keys=max_keys).attach(target)
