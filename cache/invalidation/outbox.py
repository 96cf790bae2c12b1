"""The transactional outbox: an event is written in the caller's own transaction, and a
relay moves committed rows to the log at least once.

`publish(..., session=s)` inserts an outbox row through `s`; if the caller rolls back, the
row never existed, if it commits, the row waits for the relay. The relay (running in the
worker) reads rows oldest first, appends them to the log, then deletes them in one
transaction: killed between the append and the delete, it sends those rows again when it
restarts, which is harmless (applying an invalidation twice changes nothing). With the
database-backed log the append and the delete share the transaction: exactly once.

Read-your-writes: a committed outbox row must not wait for the relay's next pass. Right
after a commit that wrote outbox rows (a tracked session's or `publish(..., session=s)`),
before `commit()` returns, `committed()` has every started runtime of this process
invalidate what the rows name in its own cached tables; its `Sweeper` thread then
relays those rows, and only those (by id, so a backlog of older rows never delays a
fresh commit), to the log. A task's start-of-run catch-up reads the outbox before the
log (`pending_rows`), so a committed row not relayed yet is applied there, never passed.
"""

from __future__ import annotations

import logging
import queue
import time
import weakref
from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework.cache.invalidation.db_log import DatabaseLog
from cachework.cache.invalidation.events import Event
from cachework.cache.invalidation.listener import ReconnectingLoop
from cachework.cache.invalidation.log import InvalidationLog, log_failure
from cachework.cache.invalidation.node_lock import NodeLock
from cachework.schema import invalidation_outbox

log = logging.getLogger(__name__)
_PENDING = "cachework.outbox.committing"  # session.info: rows this transaction wrote
PENDING_MAX = 1000  # outbox rows a catch-up applies itself; beyond, it drops its tables
Rows = Sequence[tuple[int, str]]  # (outbox id, event JSON)


class CommitSink(Protocol):
    """A started runtime: told about each committed outbox row of its process."""

    def apply_committed(self, datas: list[str]) -> None:
        """Invalidate what the events name in this process's cached tables."""
        ...

    def invalidation_log(self) -> InvalidationLog: ...

    @property
    def sweeper(self) -> Sweeper | None:
        """Where the rest of a commit's relay runs, off its path (None: on it)."""
        ...


_sinks: weakref.WeakSet = weakref.WeakSet()


def add_sink(sink: CommitSink) -> None:
    """Tell `sink` (a started runtime) about every outbox row its process commits."""
    _sinks.add(sink)


def remove_sink(sink: CommitSink) -> None:
    _sinks.discard(sink)


def committed(engine: sa.Engine, rows: Rows, relay_log: InvalidationLog | None = None) -> None:
    """After a commit that wrote `rows` into `engine`'s outbox, before the commit returns:
    every started runtime of this process invalidates them locally, then they are relayed
    to `relay_log` (default: a started runtime's log; none: the worker relay does it).

    On the commit's path only the local invalidation: the relay is a started runtime's
    `Sweeper`'s, off that path (a task start reads the outbox meanwhile), or done here
    when no runtime is started (never on an asyncio app's event loop: there the workers'
    relay does it). Never raises: the commit is done, and the rows stay in
    the outbox for the worker's relay (and the task-start catch-up) if anything fails."""
    if not rows:
        return
    sinks = list(_sinks)
    datas = [data for _id, data in rows]
    for sink in sinks:
        try:
            sink.apply_committed(datas)
        except Exception:
            log.exception("applying a committed invalidation in this process failed")
    started = [sink for sink in sinks if sink.sweeper is not None] or sinks
    sweeper = None
    try:
        if started:
            sweeper = started[0].sweeper
            relay_log = relay_log or started[0].invalidation_log()
    except Exception:
        log.exception("no invalidation log to relay a committed outbox row to")
    if relay_log is None:
        return
    try:
        if sweeper is None:
            if engine.dialect.is_async:  # here it would block the app's event loop
                return  # the workers' relay sends them (a task start reads them first)
            relay_rows(engine, relay_log, rows)  # here, in the committing greenlet too
        else:
            thread_engine = _thread_safe(engine, sinks)
            if thread_engine is not None:
                sweeper.submit(thread_engine, relay_log, rows)
    except Exception as exc:  # best effort: the worker's relay delivers them later
        log.warning("relaying a commit's outbox rows failed (the worker relay will): %s", exc)


def _thread_safe(engine: sa.Engine, sinks: list) -> sa.Engine | None:
    """An engine the sweeper's thread can use for `engine`'s outbox: an AsyncEngine's sync
    facade works only inside its event loop's greenlet, so a started runtime's own engine
    on the same database instead (None: none is; the workers' relay sends the rows)."""
    if not engine.dialect.is_async:
        return engine
    url = engine.url
    for sink in sinks:
        own = getattr(getattr(sink, "database", None), "engine", None)
        if own is not None and not own.dialect.is_async and _same_database(own.url, url):
            return own
    return None


def _same_database(a: sa.URL, b: sa.URL) -> bool:
    return (a.get_backend_name(), a.host, a.port, a.database, a.username) == (
        b.get_backend_name(),
        b.host,
        b.port,
        b.database,
        b.username,
    )


def relay_rows(engine: sa.Engine, target: InvalidationLog, rows: Rows) -> int:
    """Move these outbox rows, and only these, to `target`; returns how many were sent.

    A database log in the same database shares the transaction (exactly once: rows another
    relay took first are its to send). Another log gets the events first (one pipelined
    round trip on Redis), then the rows are deleted: a crash in between sends them again through
    the worker's relay, harmlessly."""
    ids = [row_id for row_id, _data in rows]
    outbox = invalidation_outbox
    try:
        if _in_database(target, engine):
            with engine.begin() as conn:
                gone = conn.execute(
                    outbox.delete().where(outbox.c.id.in_(ids)).returning(outbox.c.data)
                ).scalars()
                datas = list(gone)
                if datas:
                    target.append_in(conn, datas)
                return len(datas)
        _send(target, [data for _row_id, data in rows])
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(outbox.delete().where(outbox.c.id.in_(ids)))
        return len(rows)
    except sa.exc.SQLAlchemyError as exc:
        raise log_failure(exc, "outbox") from exc


def _in_database(target: InvalidationLog, engine: sa.Engine) -> bool:
    """Whether `target` is the database log of `engine`'s database (one transaction can
    move rows from the outbox into it)."""
    return isinstance(target, DatabaseLog) and target.engine.url == engine.url


def _send(target: InvalidationLog, datas: list[str]) -> None:
    """Append `datas` to `target`, in one round trip where it can (a Redis pipeline)."""
    append_many = getattr(target, "append_many", None)
    if append_many is not None:
        append_many(datas)
        return
    for data in datas:
        target.append(data)


class Sweeper(ReconnectingLoop):
    """Relays a started runtime's own commits' outbox rows, off the commits' path, in a
    daemon thread: a burst of commits goes in one round trip each way. What it cannot do
    (killed, log or database down) the worker's relay does later: the rows stay in the
    outbox until then, so nothing is lost, at most sent twice."""

    name = "cachework-outbox-sweeper"
    gather = 0.005  # seconds a pass waits for more commits to send with the first

    def __init__(self) -> None:
        super().__init__()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, engine: sa.Engine, target: InvalidationLog, rows: Rows) -> None:
        if self.alive and not self.stopping:
            self._jobs.put((engine, target, list(rows)))
        else:  # not running (stopped, or in a forked child before its start): here
            self._finish(engine, target, list(rows))

    def on_iteration(self) -> None:
        try:
            engine, target, rows = self._jobs.get(timeout=0.2)
        except queue.Empty:
            return
        for _ in range(200):  # a burst of commits: sent together
            try:
                more = self._jobs.get(timeout=self.gather)
            except queue.Empty:
                break
            if more[:2] == (engine, target):
                rows.extend(more[2])
            else:
                self._finish(*more)
        self._finish(engine, target, rows)

    def _finish(self, engine: sa.Engine, target: InvalidationLog, rows: Rows) -> None:
        try:
            relay_rows(engine, target, rows)
        except Exception as exc:  # the worker's relay delivers them later
            log.warning("relaying a commit's outbox rows failed (the worker relay will): %s", exc)

    def stop(self, timeout: float = 5.0) -> bool:
        """Send what was submitted (within `timeout`), then end the thread."""
        deadline = time.monotonic() + timeout
        while self.alive and not self._jobs.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().stop(max(0.0, deadline - time.monotonic()))


def pending_rows(engine: sa.Engine, limit: int = PENDING_MAX) -> list[tuple[int, str]]:
    """Up to `limit` + 1 committed rows still waiting in the outbox, oldest first."""
    query = (
        sa.select(invalidation_outbox.c.id, invalidation_outbox.c.data)
        .order_by(invalidation_outbox.c.id)
        .limit(limit + 1)
    )
    try:
        with engine.connect() as conn:
            return [(row.id, row.data) for row in conn.execute(query)]
    except sa.exc.SQLAlchemyError as exc:
        if missing_table(exc):  # cachework's tables not made yet: nothing can be waiting
            return []
        raise log_failure(exc, "outbox") from exc


def missing_table(exc: sa.exc.SQLAlchemyError) -> bool:
    """PostgreSQL's undefined_table, SQLite's 'no such table'."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == "42P01" or "no such table" in str(orig)


def write_outbox(session: Session, event: Event, relay_log: InvalidationLog | None = None) -> int:
    """Insert `event` into the outbox in `session`'s transaction; returns the row id.

    Once the session commits (before its `commit()` returns), `committed()` applies the
    row in this process and relays it: to `relay_log` when given, else to a started
    runtime's log. The worker's relay is what guarantees delivery."""
    data = event.to_json()
    row_id = session.execute(
        invalidation_outbox.insert().values(data=data).returning(invalidation_outbox.c.id)
    ).scalar_one()
    if not sa.event.contains(session, "after_commit", _after_commit):
        sa.event.listen(session, "after_commit", _after_commit)
        sa.event.listen(session, "after_transaction_end", _after_transaction_end)
    engine = session.get_bind()
    pending = session.info.setdefault(_PENDING, {})
    pending.setdefault(id(engine), (engine, relay_log, []))[2].append((int(row_id), data))
    return int(row_id)


def _after_commit(session: Session) -> None:
    for engine, relay_log, rows in session.info.pop(_PENDING, {}).values():
        committed(engine, rows, relay_log)


def _after_transaction_end(session: Session, transaction) -> None:
    if transaction.parent is None:  # rolled back (a commit took them already)
        session.info.pop(_PENDING, None)


class Relay:
    """Moves committed outbox rows to `target` (the log), oldest first."""

    def __init__(self, engine: sa.Engine, target: InvalidationLog, batch: int = 200):
        self.engine = engine
        self.target = target
        self.batch = batch

    def run_once(self) -> int:
        """Relay one batch; returns how many rows moved (0: the outbox is empty)."""
        try:
            with self.engine.connect() as conn, conn.begin() as tx:
                query = (
                    sa.select(invalidation_outbox.c.id, invalidation_outbox.c.data)
                    .order_by(invalidation_outbox.c.id)
                    .limit(self.batch)
                )
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                rows = conn.execute(query).all()
                if not rows:
                    return 0
                ids = [row.id for row in rows]
                deleted = conn.execute(
                    invalidation_outbox.delete().where(invalidation_outbox.c.id.in_(ids))
                ).rowcount
                if deleted != len(ids):  # another relay took some of them: let it finish
                    tx.rollback()
                    return 0
                datas = [row.data for row in rows]
                if _in_database(self.target, self.engine):
                    self.target.append_in(conn, datas)  # same transaction: exactly once
                else:
                    for data in datas:  # a crash before the commit below re-sends them
                        self.target.append(data)
                return len(rows)
        except sa.exc.SQLAlchemyError as exc:
            raise log_failure(exc, "outbox") from exc

    def pending(self) -> int:
        """Rows waiting in the outbox."""
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(invalidation_outbox)
            return conn.execute(query).scalar_one()


class RelayLoop(ReconnectingLoop):
    """Runs `relay` in a daemon thread: a pass every `interval` seconds while idle.

    With `elector` (a `NodeLock`), only the process holding it polls the outbox: one
    relay per node and database, not one per child. The others try to take it over every
    `retry_every` seconds (a local `flock`, no database call), so a holder that dies is
    replaced within about that long; meanwhile commits still relay their own rows."""

    name = "cachework-outbox-relay"

    def __init__(
        self,
        relay: Relay,
        interval: float = 0.2,
        *,
        elector: NodeLock | None = None,
        retry_every: float = 1.0,
    ) -> None:
        super().__init__()
        self.relay = relay
        self.interval = interval
        self.elector = elector
        self.retry_every = retry_every
        self.moved = 0
        self.passes = 0  # outbox reads made (the cost an idle node pays)
        self._failing = False

    @property
    def elected(self) -> bool:
        """Whether this process polls the outbox (holds the node's relay lock)."""
        return self.elector is None or self.elector.held

    def on_iteration(self) -> None:
        if self.elector is not None and not self.elector.acquire():
            self._stop.wait(self.retry_every)
            return
        self.passes += 1
        moved = self.relay.run_once()
        self.moved += moved
        if self._failing:
            log.info("outbox relay recovered")
            self._failing = False
        if moved == 0:
            self._stop.wait(self.interval)

    def on_connection_error(self, exc: BaseException, delay: float) -> float:
        if not self._failing:
            log.warning("outbox relay failed, retrying: %s", exc)
            self._failing = True
        return delay

    def on_stop(self) -> None:
        if self.elector is not None:
            self.elector.release()  # another process of the node takes over
