"""Automatic invalidation: the app's own ORM writes invalidate the cached tables by
themselves, in the writer's transaction, with no `publish()` call.

    from cachework.cache.invalidation import track
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
(`cachework.cache.invalidation.triggers`, `cachework triggers install`).

What a cached table depends on: `cachework.cache.invalidation.dependencies`. Which keys a write
names: `tracked_keys`, `flush_keys` (flushes) and `statement_keys` (statements). The
outbox rows written at commit: `tracking_outbox`. This module wires them to the session's
and the engine's events.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from cachework.cache.invalidation import outbox
from cachework.cache.invalidation.dependencies import (
    Dependency,
    declared_dependencies,
    dependencies,
    source_dependencies,
)
from cachework.cache.invalidation.flush_keys import FlushPlans
from cachework.cache.invalidation.statement_keys import StatementPlan, plan_statement, read_returned
from cachework.cache.invalidation.tracked_keys import WHOLE, Keys
from cachework.cache.invalidation.tracking_outbox import SUPPORTED, check_engine, write_rows
from cachework.errors import ConfigError

__all__ = [  # the names this module had before its parts moved out stay importable here
    "SUPPORTED",
    "WHOLE",
    "Dependency",
    "Tracking",
    "check_engine",
    "declared_dependencies",
    "dependencies",
    "source_dependencies",
    "track",
]


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
        self._flushes = FlushPlans(self.by_base)
        self._hook_lock = threading.Lock()
        self._targets: list[Any] = []
        self._engines: set[sa.Engine] = set()
        # Keyed by this Tracking, so two never mix. Everything a transaction collects
        # lives on its connection or its session, never on the thread: an asyncio app
        # runs many sessions' transactions interleaved on one thread.
        self._held = ("cachework.tracking", id(self))  # conn.info: the keys collected
        self._session_of = ("cachework.tracking.session", id(self))  # conn.info: sessions
        self._running = ("cachework.tracking.running", id(self))  # conn.info: a statement
        self._done = ("cachework.tracking.done", id(self))  # session.info: committed rows
        self._in_orm = ("cachework.tracking.orm", id(self))  # session.info: ORM statement

    # --- installing -----------------------------------------------------------------------

    def attach(self, target: Any) -> Tracking:
        bind = bind_of(target)
        target = sync_target(target)
        ok = isinstance(target, orm.Session | orm.sessionmaker | orm.scoped_session) or (
            isinstance(target, type) and issubclass(target, orm.Session)
        )
        if not ok:
            raise ConfigError(
                f"track() needs a Session, sessionmaker, scoped_session or Session class, "
                f"or their async forms (AsyncSession, async_sessionmaker, "
                f"async_scoped_session, an AsyncSession subclass), not {target!r}"
            )
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
        with self._hook_lock:
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

    def _after_commit(self, session: orm.Session) -> None:
        for engine, rows in session.info.pop(self._done, ()):
            outbox.committed(engine, rows)

    def _after_transaction_end(self, session: orm.Session, transaction: Any) -> None:
        if transaction.parent is None:  # rolled back (a commit took its rows already)
            session.info.pop(self._done, None)

    # --- flushes ----------------------------------------------------------------------------

    def _after_flush(self, session: orm.Session, _context: Any) -> None:
        keys = Keys(self.max_keys)
        for kind, objects in (("new", session.new), ("dirty", session.dirty)):
            for obj in objects:
                self._flushes.collect(keys, sa.inspect(obj), kind)
        for obj in session.deleted:
            self._flushes.collect(keys, sa.inspect(obj), "deleted")
        if keys.by_table:
            self.stats["flushes"] += 1
            self._keep(session.connection(), keys, [session])

    # --- writing, at commit ------------------------------------------------------------

    def _keep(self, conn: sa.Connection, keys: Keys, sessions: Any) -> None:
        """Hold `keys` for `conn`'s transaction until it commits; `sessions` (those whose
        transaction it is) hand the committed rows on when their commit returns."""
        if conn._is_autocommit_isolation():  # each statement commits by itself: write now
            self._write(conn, keys, then_commit=False, sessions=())
            return
        self._hook(conn.engine)
        held = conn.info.get(self._held)
        if held is None:
            conn.info[self._held] = keys
        else:
            held.merge(keys)
        marked = conn.info.get(self._session_of)
        if marked is None:
            marked = conn.info[self._session_of] = weakref.WeakSet()
        marked.update(sessions)

    def _drop(self, conn: sa.Connection) -> None:
        conn.info.pop(self._held, None)
        conn.info.pop(self._running, None)
        conn.info.pop(self._session_of, None)  # a session's after_begin marks it again

    def _on_commit(self, conn: sa.Connection) -> None:
        sessions = conn.info.pop(self._session_of, None) or ()
        keys = conn.info.pop(self._held, None)
        if keys is not None:
            self._write(conn, keys, then_commit=True, sessions=sessions)

    def _on_prepare(self, conn: sa.Connection, _xid: Any) -> None:
        keys = conn.info.pop(self._held, None)  # nothing can be written after PREPARE
        if keys is not None:
            sessions = conn.info.get(self._session_of) or ()
            self._write(conn, keys, then_commit=False, sessions=sessions)

    def _write(self, conn: sa.Connection, keys: Keys, *, then_commit: bool, sessions: Any) -> None:
        events = keys.events()
        if not events:
            return
        self.stats["events"] += len(events)
        self.stats["whole_table"] += sum(1 for e in events if e.keys is None)
        rows = write_rows(conn, events, then_commit=then_commit)
        if conn._is_autocommit_isolation():  # committed already: tell the process now
            outbox.committed(conn.engine, rows)
            return
        for session in sessions:  # each session's after_commit takes them
            session.info.setdefault(self._done, []).append((conn.engine, rows))

    # --- statements: ORM-enabled ones and Core ones on a tracked session's connection ---

    def _plan(
        self, statement: Any, params: Any, mapper: Any, dialect: sa.Dialect
    ) -> StatementPlan | None:
        """The statement's `StatementPlan`, counted; None: no cached table reads its table."""
        plan = plan_statement(statement, params, mapper, dialect, self.by_base, self.max_keys)
        if plan is not None:
            self.stats["statements"] += 1
        return plan

    def _do_orm_execute(self, state: orm.ORMExecuteState) -> Any:
        if not (state.is_update or state.is_delete or state.is_insert):
            return None
        bind = state.session.get_bind(mapper=state.bind_mapper, clause=state.statement)
        plan = self._plan(state.statement, state.parameters, state.bind_mapper, bind.dialect)
        if plan is None:
            return None
        keys, keyed, statement = plan
        info = state.session.info
        info[self._in_orm] = info.get(self._in_orm, 0) + 1
        try:  # its Core form on the connection is this statement: not tracked twice
            if statement is state.statement:
                result = state.invoke_statement()
            else:
                result = state.invoke_statement(statement=statement)
        finally:
            info[self._in_orm] -= 1
        read_returned(keys, keyed, result)
        if keys.by_table:
            self._keep(state.session.connection(), keys, [state.session])
        return result

    def _before_execute(
        self, conn: sa.Connection, clause: Any, multiparams: Any, params: Any, options: Any
    ) -> tuple[Any, Any, Any]:
        """A Core INSERT/UPDATE/DELETE run on a tracked session's connection
        (`session.connection().execute(update(table)...)`): tracked like an ORM one."""
        sessions = conn.info.get(self._session_of)
        if (
            not sessions
            or any(session.info.get(self._in_orm) for session in sessions)
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
            conn.info[self._running] = (statement, keys, keyed)
        elif keys.by_table:
            self._keep(conn, keys, list(sessions))
        return statement, multiparams, params

    def _after_execute(
        self, conn: sa.Connection, clause: Any, _multi: Any, _params: Any, _opts: Any, result: Any
    ) -> None:
        running = conn.info.get(self._running)
        if running is None or running[0] is not clause:
            return
        del conn.info[self._running]
        _statement, keys, keyed = running
        read_returned(keys, keyed, result)
        if keys.by_table:
            self._keep(conn, keys, list(conn.info.get(self._session_of) or ()))


def bind_of(target: Any) -> Any:
    """The engine a session factory or session is bound to, when it says (else None): an
    AsyncEngine for the async forms, which `check_engine` reads through its sync facade."""
    target = getattr(target, "session_factory", target)  # scoped_session, async or not
    kw = getattr(target, "kw", None)  # sessionmaker, async_sessionmaker
    if isinstance(kw, dict):
        return kw.get("bind")
    if isinstance(target, orm.Session) or _is_async_session(target):
        return target.bind
    return None


def _is_async_session(target: Any) -> bool:
    from sqlalchemy.ext.asyncio import AsyncSession

    return isinstance(target, AsyncSession)


def sync_target(target: Any) -> Any:
    """Where the events of `target`'s sessions fire: itself for the sync forms; for the
    async ones, the `Session` (class) SQLAlchemy runs their work through.

    An `AsyncSession` runs on its `sync_session`. An `async_sessionmaker` (or an
    `async_scoped_session`'s) makes every session on one `sync_session_class`, by default
    `Session` itself, which every other session of the process shares: it gets a subclass
    of its own (in its `kw`), so only its sessions are tracked. An `AsyncSession` subclass
    likewise gets its own `sync_session_class`; `AsyncSession` itself is refused."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker

    if isinstance(target, AsyncSession):
        return target.sync_session
    if isinstance(target, async_scoped_session):
        target = target.session_factory
    if isinstance(target, async_sessionmaker):
        base = target.kw.get("sync_session_class") or target.class_.sync_session_class
        if not getattr(base, "_cachework_own", False):
            base = target.kw["sync_session_class"] = _own_class(base, "async_sessionmaker")
        return base
    if isinstance(target, type) and issubclass(target, AsyncSession):
        if target is AsyncSession:
            raise ConfigError(
                "track(AsyncSession) would track every async session of the process: pass "
                "your async_sessionmaker, async_scoped_session or AsyncSession subclass"
            )
        if not getattr(target.sync_session_class, "_cachework_own", False):
            target.sync_session_class = _own_class(target.sync_session_class, target.__name__)
        return target.sync_session_class
    return target


def _own_class(base: type[orm.Session], owner: str) -> type[orm.Session]:
    """A subclass of `base` that only `owner`'s sessions use (events listen per class)."""
    return type(f"Tracked{base.__name__}", (base,), {"_cachework_own": True, "__doc__": owner})


def track(target: Any, tables: Any, *, max_keys: int | None = None) -> Tracking:
    """Make every flush and ORM-enabled DML statement of `target`'s sessions write its
    invalidations into the outbox, in the writer's transaction.

    `target`: a `sessionmaker`, `Session` class or instance, or `scoped_session`, or an
    asyncio app's `async_sessionmaker`, `AsyncSession` (subclass or instance) or
    `async_scoped_session` (see `sync_target`): call it at start-up, before the factory
    makes the sessions it should track.
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
