"""Fault suite (`make faults`): read-your-writes after tracked commits, with real prefork
workers (2 nodes x 2 children), the run's PostgreSQL and a Redis Stream of its own.

This test's process is the web process: a started runtime and `track(Session, runtime)`.
Each tracked commit is followed at once by a read of the cached table in the writer's own
process and by a `cachework.lookup` sent to the workers; either reading an older name is
stale. Then the same behind a 20,000-row outbox backlog (the workers' relay cannot keep
up, as after an outage), where the commit's own row must not wait behind the backlog.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework.cache.invalidation import track
from cachework.schema import invalidation_outbox
from cachework.worker.runtime import Runtime
from demo.models import Category
from tests.conftest import make_env, settings_of
from tests.fault_helpers import TABLE, Row
from tests.invalidation_helpers import OwnRedis
from tests.test_faults import Node, _fresh_schema

pytestmark = pytest.mark.faults
COMMITS = 1000
BACKLOG = 20_000


@pytest.fixture(scope="module")
def web(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("faults-ryw")
    engine = _fresh_schema(pg_server_url)
    server = OwnRedis(folder / "stream").start()
    url = redis_server_url.rsplit("/", 1)[0] + "/8"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    env = make_env(
        folder, database_url=pg_server_url, broker_url=url, result_backend=url, redis_url=server.url
    )
    nodes = Node(env, folder)
    runtime = Runtime(settings_of(env))
    Session = sessionmaker(engine)
    tracking = None
    try:
        for _ in range(2):
            nodes.start(concurrency=2)
        runtime.start()
        tracking = track(Session, runtime)
        yield {"engine": engine, "nodes": nodes, "runtime": runtime, "Session": Session}
    finally:
        if tracking is not None:
            tracking.stop()
        runtime.close()
        nodes.close()
        server.stop()
        broker.flushdb()
        broker.close()
        engine.dispose()


def _rename(Session, name: str, i: int) -> None:
    """A tracked rename: an ORM write, or (every fourth) a Core UPDATE on the session's
    own connection."""
    with Session.begin() as session:
        if i % 4 == 3:
            table = Category.__table__
            session.connection().execute(sa.update(table).where(table.c.id == 1).values(name=name))
        else:
            session.get(Category, 1).name = name


def _check(web: dict, row, name: str, i: int) -> None:
    """Read at once in this process and through a lookup task sent now."""
    app = web["nodes"].app
    row.tries += 1
    here = web["runtime"].registry.table("categories").get(1)["name"]
    there = app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1})
    try:
        there = there.get(timeout=60, interval=0.005)["name"]
    except Exception as exc:
        row.lost += 1
        row.notes.append(f"lookup {i}: {type(exc).__name__}")
        return
    if here != name or there != name:
        row.stale += 1
        row.notes.append(f"commit {name}: writer read {here!r}, lookup read {there!r}")
    else:
        row.completed += 1


def _commits(web: dict, row, count: int, prefix: str) -> list[float]:
    """`count` tracked renames, each read at once here and through a lookup task; returns
    each commit's duration (seconds)."""
    durations = []
    for i in range(count):
        name = f"{prefix}{i}"
        started = time.perf_counter()
        _rename(web["Session"], name, i)
        durations.append(time.perf_counter() - started)
        _check(web, row, name, i)
    return durations


def test_read_your_writes_under_load(web):
    row = TABLE.row(
        f"read-your-writes: {COMMITS} tracked commits (1 in 4 a Core UPDATE on the session's "
        "connection), 2 nodes x 2 children"
    )
    _commits(web, row, COMMITS, "load")
    assert row.lost == 0 and row.stale == 0, row


def test_read_your_writes_behind_an_outbox_backlog(web):
    row = TABLE.row(f"read-your-writes behind a {BACKLOG:,}-row outbox backlog")
    engine = web["engine"]
    quiet = _commits(web, Row("baseline: commits without a backlog"), 50, "quiet")
    with engine.begin() as conn:
        conn.execute(
            invalidation_outbox.insert(),
            [{"data": '{"v":1,"table":"products"}'} for _ in range(BACKLOG)],
        )
    first = _commits(web, row, 1, "first")
    with engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(invalidation_outbox)).scalar()
    behind = first + _commits(web, row, 99, "behind")
    row.notes.append(
        f"commit median {statistics.median(quiet) * 1000:.1f} ms without the backlog, "
        f"{statistics.median(behind) * 1000:.1f} ms behind it ({left} rows waiting after "
        "the first commit)"
    )
    print(row.notes[-1])  # the figures (bench/tracking.py measures them properly)
    assert left >= 1000  # the workers' relay had not caught up when it committed
    assert row.lost == 0 and row.stale == 0, row


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_read_your_writes_from_an_async_session(web, driver):
    """An asyncio app's tracked `AsyncSession` (asyncpg, psycopg's async driver): each
    commit read at once in the process and by a lookup."""
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    row = TABLE.row(f"read-your-writes from an AsyncSession ({driver}), 50 commits")

    class Tracked(AsyncSession):
        sync_session_class = type("TrackedSync", (sa.orm.Session,), {})

    tracking = track(Tracked.sync_session_class, web["runtime"])
    url = web["engine"].url.set(drivername=f"postgresql+{driver}")

    async def run() -> None:
        engine = create_async_engine(url)
        Session = async_sessionmaker(engine, class_=Tracked)
        try:
            for i in range(50):
                name = f"async-{driver}-{i}"
                async with Session.begin() as session:
                    (await session.get(Category, 1)).name = name
                _check(web, row, name, i)  # blocking reads: this test's loop does nothing else
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    finally:
        tracking.stop()
    assert row.lost == 0 and row.stale == 0, row
