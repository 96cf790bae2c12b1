"""An engine and its session factory, as a process's runtime holds them.

A prefork child must never use a socket its parent opened: the runtime drops the
inherited pool after fork with `dispose(close=False)`, so each child opens its own
connections. Sessions come from `Database.session()`, one per job, and are always closed;
`open_sessions` and `live_databases()` let tests assert none leaked.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cachework import pooler as poolers

_live: weakref.WeakSet[Database] = weakref.WeakSet()


class Database:
    """One engine plus its session factory, with a count of sessions still open."""

    def __init__(self, url: str, pooler: str = poolers.NONE, pool_size: int = 5) -> None:
        self.url = url
        self.engine = make_engine(url, pooler, pool_size)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._open = 0
        self._count_lock = threading.Lock()
        self._here = threading.local()  # per thread (per greenlet once gevent/eventlet patch)
        _live.add(self)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success, rolls back on error, and is always closed."""
        session = self.sessionmaker()
        with self._count_lock:
            self._open += 1
        self._here.open = getattr(self._here, "open", 0) + 1
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            with self._count_lock:
                self._open -= 1
            self._here.open -= 1

    @property
    def open_sessions(self) -> int:
        """Sessions open in the whole process (every thread): a leak check once all
        work is done."""
        return self._open

    @property
    def open_sessions_here(self) -> int:
        """Sessions the current thread (greenlet, under gevent or eventlet) opened and
        has not closed: what a task leaves open, while other tasks run beside it."""
        return getattr(self._here, "open", 0)

    def checked_out(self) -> int:
        """Connections currently checked out of the pool (0 when nothing leaked)."""
        pool = self.engine.pool
        return pool.checkedout() if hasattr(pool, "checkedout") else 0

    def dispose(self) -> None:
        self.engine.dispose()


def live_databases() -> list[Database]:
    """Every Database of this process not yet garbage-collected (leak checks in tests)."""
    return list(_live)


def make_engine(url: str, pooler: str = poolers.NONE, pool_size: int = 5) -> sa.Engine:
    """An engine with settings that suit a worker: pre-ping, and WAL plus a busy timeout
    on SQLite so several processes can share the embedded file. On PostgreSQL, `pooler`
    (CACHEWORK_DATABASE_POOLER) and the URL's `prepare_threshold` decide psycopg's
    prepared statements (cachework/pooler.py)."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,  # connections kept; 5 more at a peak (a worker: see pools.py)
        max_overflow=5,
        connect_args={"connect_timeout": 5, **poolers.connect_args(url, pooler)},
    )
    return poolers.hint_pooler(engine, pooler)
