"""Read-your-writes after a tracked or outbox-published commit (issue 18, items 1, 4, 9).

When `commit()` returns: (a) the committing process's own cached tables no longer serve
the old record, and (b) a process that starts a read after it (a task start's catch-up,
here a second runtime's `catch_up()`) sees the change, as for `publish(..., log=...)`.
The log is a real Redis Stream (the run's own redis-server) or the database table; the
database is the run's PostgreSQL or SQLite. A backlog of older outbox rows, or a log that
cannot be reached at the commit, never makes a read stale.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework.cache.invalidation import publish, track
from cachework.cache.invalidation.outbox import PENDING_MAX
from cachework.errors import ConfigError
from cachework.schema import invalidation_outbox
from cachework.worker.runtime import Runtime
from demo.models import Category
from tests.conftest import make_env, settings_of
from tests.invalidation_helpers import outbox_count, wait_until

ROUNDS = 30


@pytest.fixture(params=["redis", "database"])
def writer(request, database, tmp_path) -> Iterator[dict]:
    """A started runtime (the web process), a second runtime that only catches up (a
    task starting elsewhere), and the app's own tracked session factory."""
    with database.session() as session:
        session.add_all(Category(id=i, code=f"c{i}", name=f"n{i}") for i in (1, 2))
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else "off"
    # Cached tables only: the demo plugin's items (their own outbox rows) are not followed.
    env = make_env(
        tmp_path, database_url=database.url, redis_url=redis_url, rebuild_on_change="off"
    )
    runtime = Runtime(settings_of(env), database=database).start()
    other = Runtime(settings_of(env))
    app_engine = sa.create_engine(database.url, poolclass=sa.pool.NullPool)
    Session = sessionmaker(app_engine)
    tracking = track(Session, runtime)
    try:
        yield {"runtime": runtime, "other": other, "Session": Session, "tracking": tracking}
    finally:
        tracking.stop()
        runtime.stop()
        other.close()
        app_engine.dispose()


def _reads(runtime: Runtime, key: int = 1) -> str:
    return runtime.registry.table("categories").get(key)["name"]


def _read_after_catch_up(runtime: Runtime, key: int = 1) -> str:
    runtime.catch_up()  # what every task does before it runs
    return _reads(runtime, key)


def test_a_tracked_commit_is_read_at_once_here_and_by_a_task_starting_elsewhere(writer):
    runtime, other, Session = writer["runtime"], writer["other"], writer["Session"]
    assert _reads(runtime) == "n1" and _read_after_catch_up(other) == "n1"
    stale_here = stale_there = 0
    for i in range(ROUNDS):
        with Session.begin() as session:
            session.get(Category, 1).name = f"orm{i}"
        stale_here += _reads(runtime) != f"orm{i}"
        stale_there += _read_after_catch_up(other) != f"orm{i}"
    assert (stale_here, stale_there) == (0, 0)
    assert writer["tracking"].stats["events"] == ROUNDS


def test_published_into_the_outbox_is_read_at_once_too(writer):
    runtime, other = writer["runtime"], writer["other"]
    assert _reads(runtime, 2) == "n2" and _read_after_catch_up(other, 2) == "n2"
    engine = runtime.database.engine
    for i in range(5):
        with runtime.database.session() as session:  # untracked: publish() by hand
            session.execute(sa.text("UPDATE categories SET name = :n WHERE id = 2"), {"n": i})
            publish("categories", [2], session=session)
        assert _reads(runtime, 2) == str(i)
        assert _read_after_catch_up(other, 2) == str(i)
    # Relayed by the committer itself (its sweeper finishes the move off the commit's path)
    assert wait_until(lambda: outbox_count(engine) == 0, timeout=5)


def test_core_statements_on_a_tracked_sessions_connection_are_tracked(writer):
    """`session.connection().execute(update(table)...)`: keys from RETURNING."""
    runtime, other, Session, tracking = (
        writer[k] for k in ("runtime", "other", "Session", "tracking")
    )
    table = Category.__table__
    assert _reads(runtime) == "n1" and _read_after_catch_up(other) == "n1"
    before = tracking.stats["statements"]
    with Session() as session:
        conn = session.connection()
        result = conn.execute(sa.update(table).where(table.c.id == 1).values(name="core"))
        assert result.rowcount == 1  # the caller's result is unchanged
        session.commit()
    assert tracking.stats["statements"] == before + 1
    assert _reads(runtime) == "core"
    assert _read_after_catch_up(other) == "core"
    with Session() as session:  # executemany of a Core INSERT: keys from the parameters
        session.connection().execute(
            sa.insert(table),
            [{"id": 7, "code": "c7", "name": "seven"}, {"id": 8, "code": "c8", "name": "eight"}],
        )
        session.connection().execute(sa.delete(table).where(table.c.id == 2))
        session.commit()
    assert runtime.registry.table("categories").get(2) is None
    assert _reads(runtime, 7) == "seven"
    other.catch_up()
    assert other.registry.table("categories").get(2) is None


def test_a_rollback_invalidates_nothing_and_relays_nothing(writer):
    runtime, Session = writer["runtime"], writer["Session"]
    assert _reads(runtime) == "n1"
    log = runtime.invalidation_log()
    head = log.state().head
    with Session() as session:
        session.get(Category, 1).name = "never"
        session.flush()
        session.rollback()
    assert log.state().head == head
    assert outbox_count(runtime.database.engine) == 0
    assert _reads(runtime) == "n1"
    assert runtime.registry.table("categories").stats()["refreshes"] == 0


def test_a_commit_behind_a_backlog_is_relayed_first(writer):
    """20,000 older rows wait in the outbox (the relay is down): the commit's own row goes
    to the log by id, never behind them, and a task start reads fresh records at once."""
    runtime, other, Session = writer["runtime"], writer["other"], writer["Session"]
    engine = runtime.database.engine
    with engine.begin() as conn:
        conn.execute(
            invalidation_outbox.insert(),
            [{"data": '{"v":1,"table":"products"}'} for _ in range(20_000)],
        )
    assert _read_after_catch_up(other) == "n1"  # over PENDING_MAX waiting: it dropped
    assert other.tracker.stats["drops"] >= 1
    log = runtime.invalidation_log()
    head = log.state().head
    with Session.begin() as session:
        session.get(Category, 1).name = "fresh"
    assert _reads(runtime) == "fresh"

    def sent() -> list:  # the committer's sweeper relays its own row, off the commit's path
        entries = log.read(head).entries
        return [raw.decode() if isinstance(raw, bytes) else raw for _id, raw in entries]

    ours = ['{"v":1,"table":"categories","keys":[1]}']
    assert wait_until(lambda: sent() == ours, timeout=5)  # not after the 20,000 older rows
    # Its own row leaves the outbox; the backlog is still there, untouched
    assert wait_until(lambda: outbox_count(engine) == 20_000, timeout=5)
    assert _read_after_catch_up(other) == "fresh"
    assert PENDING_MAX < 20_000


def test_an_unreachable_log_at_the_commit_costs_neither_the_write_nor_freshness(
    writer, monkeypatch
):
    """The relay right after the commit fails: the commit stands, the row stays in the
    outbox, and a task start applies it from there."""
    runtime, other, Session = writer["runtime"], writer["other"], writer["Session"]
    assert _read_after_catch_up(other) == "n1"
    log = runtime.invalidation_log()

    def refuse(_data):
        from cachework.cache.invalidation import LogUnavailable

        raise LogUnavailable("invalidation log unreachable (test)")

    monkeypatch.setattr(type(log), "append", lambda self, data: refuse(data))
    if hasattr(log, "append_many"):
        monkeypatch.setattr(type(log), "append_many", lambda self, datas: refuse(datas))
    monkeypatch.setattr(
        "cachework.cache.invalidation.DatabaseLog.append_in",
        lambda self, conn, datas: refuse(datas),
    )
    with Session.begin() as session:
        session.get(Category, 1).name = "kept"
    time.sleep(0.3)  # the sweeper's attempt (a database log) fails too
    assert outbox_count(runtime.database.engine) == 1
    assert _reads(runtime) == "kept"
    assert _read_after_catch_up(other) == "kept"


# --- drivers ------------------------------------------------------------------------------


def test_track_refuses_an_engine_it_cannot_serve_before_any_write(sqlite_url):
    engine = sa.create_engine(sqlite_url)
    engine.dialect.name = "mssql"  # a database the outbox cannot live in
    with pytest.raises(ConfigError, match="track\\(\\) cannot serve 'mssql'"):
        track(sessionmaker(engine), {"categories": {"categories": "id"}})
    engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_an_async_sessions_tracked_commit_keeps_the_write_and_its_event(pg_database, driver):
    """`track(AsyncSession.sync_session_class)` on psycopg's async driver crashed at the
    commit and lost the app's write; now the write and its outbox row commit together,
    and a rollback writes neither."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    url = pg_database.engine.url.set(drivername=f"postgresql+{driver}")
    deps = {"categories": {"categories": "id"}}

    class Tracked(AsyncSession):
        sync_session_class = type("TrackedSync", (sa.orm.Session,), {})

    tracking = track(Tracked.sync_session_class, deps)

    async def run() -> None:
        engine = create_async_engine(url, poolclass=sa.pool.NullPool)
        Session = async_sessionmaker(engine, class_=Tracked)
        try:
            async with Session() as session:
                session.add(Category(id=5, code="c5", name="async"))
                await session.commit()
            async with Session() as session:
                (await session.get(Category, 5)).name = "undone"
                await session.flush()
                await session.rollback()
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    finally:
        tracking.stop()
    with pg_database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM categories WHERE id = 5")).scalar() == "async"
        rows = conn.execute(sa.select(invalidation_outbox.c.data)).scalars().all()
    assert rows == ['{"v":1,"table":"categories","keys":[5]}']


def test_an_unreachable_outbox_drops_the_tables_only_if_rows_were_waiting(writer, monkeypatch):
    """A database that is down takes no commits: a task start keeps serving from memory
    when the outbox was empty at its last read, and drops when rows were waiting then."""
    from cachework.cache.invalidation import LogUnavailable
    from cachework.worker import runtime as runtime_module

    other = writer["other"]
    assert _read_after_catch_up(other) == "n1"
    drops = other.tracker.stats["drops"]

    def down(_engine):
        raise LogUnavailable("outbox unreachable (test)")

    monkeypatch.setattr(runtime_module, "pending_rows", down)
    other.catch_up()
    assert other.tracker.stats["drops"] == drops  # empty at the last read: kept
    monkeypatch.undo()
    with other.database.engine.begin() as conn:  # a row waits (its relay not done yet)
        conn.execute(invalidation_outbox.insert(), [{"data": '{"v":1,"table":"products"}'}])
    other.catch_up()
    monkeypatch.setattr(runtime_module, "pending_rows", down)
    other.catch_up()
    assert other.tracker.stats["drops"] == drops + 1


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_an_async_sessions_commit_is_read_at_once_and_relayed(
    pg_database, redis_url, tmp_path, driver
):
    """With a started runtime: the async commit invalidates in the process at once, and
    the runtime's sweeper thread relays the row through the runtime's own engine (an
    AsyncEngine's sync facade cannot be used outside its event loop)."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    with pg_database.session() as session:
        session.add(Category(id=1, code="c1", name="n1"))
    env = make_env(
        tmp_path, database_url=pg_database.url, redis_url=redis_url, rebuild_on_change="off"
    )
    runtime = Runtime(settings_of(env), database=pg_database).start()
    log = runtime.invalidation_log()

    class Tracked(AsyncSession):
        sync_session_class = type("TrackedSync", (sa.orm.Session,), {})

    tracking = track(Tracked.sync_session_class, runtime)
    seen: list[str] = []

    async def run() -> None:
        engine = create_async_engine(pg_database.engine.url.set(drivername=f"postgresql+{driver}"))
        Session = async_sessionmaker(engine, class_=Tracked)
        try:
            for i in range(5):
                async with Session.begin() as session:
                    (await session.get(Category, 1)).name = f"async{i}"
                seen.append(_reads(runtime))
        finally:
            await engine.dispose()

    try:
        assert _reads(runtime) == "n1"
        head = log.state().head
        asyncio.run(run())
        assert seen == [f"async{i}" for i in range(5)]
        assert wait_until(lambda: outbox_count(pg_database.engine) == 0, timeout=5)
        assert len(log.read(head).entries) == 5  # relayed by this process, not the workers
    finally:
        tracking.stop()
        runtime.stop()


def test_a_burst_of_commits_is_relayed_in_few_passes(writer, monkeypatch):
    """The sweeper sends a burst of commits' rows together when they name one log: the
    runtime hands out one log object (it made a new one per call, so every commit was a
    pass of its own: 1.5-1.75x on an async commit loop, `bench/aio.py`)."""
    import threading

    runtime, Session = writer["runtime"], writer["Session"]
    assert runtime.invalidation_log() is runtime.invalidation_log()
    sweeper = runtime.sweeper
    finish, gate, passes = sweeper._finish, threading.Event(), []

    def held(engine, target, rows):
        passes.append(len(rows))
        assert gate.wait(10)
        finish(engine, target, rows)

    monkeypatch.setattr(sweeper, "_finish", held)
    for i in range(20):  # the first pass holds; the other 19 commits queue behind it
        with Session.begin() as session:
            session.get(Category, 1).name = f"burst{i}"
    gate.set()
    assert wait_until(lambda: outbox_count(runtime.database.engine) == 0, timeout=10)
    assert sum(passes) == 20 and len(passes) <= 3, passes
