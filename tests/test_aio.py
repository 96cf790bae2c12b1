"""The async face against PostgreSQL on asyncpg and psycopg's async driver (issue 21).

An asyncio app's own `async_sessionmaker`, tracked: its writes (ORM flushes, ORM bulk
statements, Core statements on the session's connection) write their outbox rows in the
writer's transaction, are read at once in the writer's process and reach the log; a
rollback publishes nothing; transactions interleaved on one event loop keep each other's
events. Project cache items, `publish` (outbox and log) and the read barrier, awaited.
The log is the run's private Redis (a Stream); the runtime is the process's own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import sessionmaker

from cachework.cache import aio
from cachework.cache.invalidation import RedisLog, track
from cachework.errors import ConfigError, TransientError, ValidationError
from cachework.schema import invalidation_outbox
from cachework.worker.runtime import Runtime, runtime_lifespan
from demo.models import Category
from tests.conftest import make_env, settings_of
from tests.invalidation_helpers import outbox_count, wait_until

DRIVERS = ["asyncpg", "psycopg"]
WRITERS = 15  # rows 1..15 by flushes, 16..30 by statements


@pytest.fixture(params=DRIVERS)
def app(request, pg_database, redis_url, tmp_path) -> Iterator[dict]:
    """A started runtime (the web process's), a second runtime that only catches up (a
    task elsewhere), and the async URL of the app's own engine on the driver."""
    with pg_database.session() as session:
        session.add_all(Category(id=i, code=f"c{i}", name=f"n{i}") for i in range(1, 31))
    env = make_env(tmp_path, database_url=pg_database.url, redis_url=redis_url)
    runtime = Runtime(settings_of(env), database=pg_database).start()
    other = Runtime(settings_of(env))
    url = pg_database.engine.url.set(drivername=f"postgresql+{request.param}")
    try:
        yield {"runtime": runtime, "other": other, "url": url, "env": env, "db": pg_database}
    finally:
        runtime.stop()
        other.close()


def run(url, body, *, tracked_by=None):
    """`body(Session, engine)` on a fresh event loop with an async_sessionmaker on `url`
    (tracked by `tracked_by`, a runtime, when given); returns its result."""

    async def main():
        engine = create_async_engine(url, poolclass=sa.pool.NullPool)
        Session = async_sessionmaker(engine, expire_on_commit=False)
        tracking = track(Session, tracked_by) if tracked_by is not None else None
        try:
            return await body(Session, engine)
        finally:
            if tracking is not None:
                tracking.stop()
            await engine.dispose()

    return asyncio.run(main())


def _logged(runtime: Runtime, after: str) -> list[dict]:
    """The events of `categories` the runtime's log holds after `after`."""
    entries = runtime.invalidation_log().read(after, count=10_000).entries
    events = [json.loads(data) for _id, data in entries]
    return [event for event in events if event["table"] == "categories"]


def _logged_keys(runtime: Runtime, after: str) -> set:
    return {key for event in _logged(runtime, after) for key in event.get("keys") or ()}


def test_tracked_writes_are_read_at_once_here_and_after_catch_up_elsewhere(app):
    runtime, other = app["runtime"], app["other"]
    view = aio.table(runtime, "categories")
    head = runtime.invalidation_log().state().head
    assert other.registry.table("categories").get(1)["name"] == "n1"

    async def body(Session, _engine):
        seen = []
        async with Session.begin() as session:  # an ORM flush
            (await session.get(Category, 1)).name = "orm"
        seen.append((await view.get(1))["name"])
        async with Session.begin() as session:  # an ORM-enabled bulk statement
            await session.execute(sa.update(Category).where(Category.id == 2).values(name="bulk"))
        seen.append((await view.get(2))["name"])
        async with Session.begin() as session:  # Core on the session's own connection
            conn = await session.connection()
            table = Category.__table__
            await conn.execute(sa.update(table).where(table.c.id == 3).values(name="core"))
        seen.append((await view.get(3))["name"])
        return seen

    assert run(app["url"], body, tracked_by=runtime) == ["orm", "bulk", "core"]
    other.catch_up()  # a task starting elsewhere after the commits returned
    assert [other.registry.table("categories").get(i)["name"] for i in (1, 2, 3)] == [
        "orm",
        "bulk",
        "core",
    ]
    assert wait_until(lambda: outbox_count(app["db"].engine) == 0, timeout=10)  # relayed here
    assert {1, 2, 3} <= _logged_keys(runtime, head)


def test_a_rollback_publishes_nothing(app):
    runtime = app["runtime"]
    view = aio.table(runtime, "categories")
    head = runtime.invalidation_log().state().head

    async def body(Session, _engine):
        assert (await view.get(4))["name"] == "n4"
        async with Session() as session:
            (await session.get(Category, 4)).name = "undone"
            await session.flush()
            await session.execute(sa.update(Category).where(Category.id == 5).values(name="u"))
            await session.rollback()
        return (await view.get(4))["name"], (await view.get(5))["name"]

    assert run(app["url"], body, tracked_by=runtime) == ("n4", "n5")
    assert outbox_count(app["db"].engine) == 0
    assert _logged_keys(runtime, head) == set()


def test_transactions_interleaved_on_one_loop_keep_each_others_events(app):
    """Fifteen tasks write at once on one thread (ORM flushes, ORM bulk statements and Core
    statements on the session's connection, each awaiting the database in between): each
    reads its own write at once and every key reaches the outbox. What a statement or a
    transaction collects belongs to its connection and session, not to the thread the
    loop shares. The runtime has no listener: only the commits invalidate."""
    app["runtime"].stop()  # nothing relays: the outbox keeps every row
    runtime = app["other"]
    runtime.catch_up()
    view = aio.table(runtime, "categories")
    table = Category.__table__

    async def body(Session, _engine):
        await view.get(1)  # loaded

        async def writer(i: int) -> tuple[str, str]:
            other = i + WRITERS  # a row only the statement writes
            async with Session() as session:
                (await session.get(Category, i)).name = f"w{i}"
                await session.flush()
                await asyncio.sleep(0)  # let the others run in between
                if i % 2:
                    await session.execute(
                        sa.update(Category).where(Category.id == other).values(name=f"s{i}")
                    )
                else:
                    conn = await session.connection()
                    await conn.execute(
                        sa.update(table).where(table.c.id == other).values(name=f"s{i}")
                    )
                await session.commit()
            return (await view.get(i))["name"], (await view.get(other))["name"]

        return await asyncio.gather(*(writer(i) for i in range(1, WRITERS + 1)))

    seen = run(app["url"], body, tracked_by=runtime)
    assert seen == [(f"w{i}", f"s{i}") for i in range(1, WRITERS + 1)]
    with app["db"].engine.connect() as conn:
        datas = conn.execute(sa.select(invalidation_outbox.c.data)).scalars().all()
    events = [json.loads(data) for data in datas]
    keys = {k for e in events if e["table"] == "categories" for k in e["keys"]}
    assert keys == set(range(1, 2 * WRITERS + 1))


SLOW_COMMIT = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON categories
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'slow')
EXECUTE FUNCTION slow_commit();
"""


def test_a_commit_in_flight_keeps_its_events_while_another_commits_and_reads(app):
    """A's COMMIT takes a second on the server (a deferred trigger); meanwhile B commits
    and reads, which refreshes whatever is pending. Had B's commit taken A's rows (kept
    per thread, which the loop shares), B's read would reload A's row before A committed
    and A's own read would then serve the old name. The runtime here has no listener, so
    only the commit itself can invalidate what A wrote."""
    app["runtime"].stop()
    runtime = app["other"]  # not started: the tables, no listener, no relay
    runtime.catch_up()  # as a task start does: it follows the log from here
    view = aio.table(runtime, "categories")
    with app["db"].engine.begin() as conn:
        conn.exec_driver_sql(SLOW_COMMIT)

    async def body(Session, _engine):
        await view.get(1)

        async def write(key: int, name: str) -> str:
            async with Session.begin() as session:
                (await session.get(Category, key)).name = name
            return (await view.get(key))["name"]

        slow = asyncio.ensure_future(write(1, "slow"))
        await asyncio.sleep(0.3)  # A is committing now
        fast = await write(2, "fast")
        return fast, await slow

    assert run(app["url"], body, tracked_by=runtime) == ("fast", "slow")


def test_tracking_an_async_factory_tracks_its_sessions_only(app):
    """An async_sessionmaker's sessions share `Session` with every other session of the
    process unless told otherwise: tracking gives it a class of its own."""
    runtime = app["runtime"]

    async def body(Session, engine):
        untracked = async_sessionmaker(engine)
        async with untracked.begin() as session:
            (await session.get(Category, 6)).name = "not tracked"
        scoped = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
        scoped_tracking = track(scoped, runtime)
        try:
            async with scoped() as session:
                (await session.get(Category, 7)).name = "scoped"
                await session.commit()
            await scoped.remove()
        finally:
            scoped_tracking.stop()
        single = AsyncSession(engine)
        single_tracking = track(single, runtime)
        try:
            (await single.get(Category, 8)).name = "instance"
            await single.commit()
        finally:
            await single.close()
            single_tracking.stop()

    head = runtime.invalidation_log().state().head
    run(app["url"], body)  # the factory `run` makes is not tracked here
    sync_session = sessionmaker(app["db"].engine)()
    try:
        sync_session.get(Category, 9).name = "sync, untracked"
        sync_session.commit()
    finally:
        sync_session.close()
    wait_until(lambda: outbox_count(app["db"].engine) == 0, timeout=10)  # each row relayed
    events = _logged(runtime, head)
    assert sorted(k for e in events for k in e["keys"]) == [7, 8]
    with pytest.raises(ConfigError, match="every async session of the process"):
        track(AsyncSession, runtime)


def test_project_items_through_an_async_session(app):
    async def body(Session, _engine):
        async with Session() as session:
            await aio.set_item(session, "inventory", "summary", {"products": 3}, project="p1")
            written = await aio.set_items(
                session,
                [
                    {"app_name": "inventory", "name": "by_category", "data": {"a": 1}}
                    | {"project": "p1"},
                    {"app_name": "inventory", "name": "site", "data": [1, 2]},
                ],
            )
            await session.commit()
            item = await aio.get_item(session, "inventory", "summary", project="p1")
            stamp = await aio.get_update_time(session, "inventory", "summary", project="p1")
            names = [i.name for i in await aio.get_project_items(session, "p1", "inventory")]
            site = await aio.get_item(session, "inventory", "site")
            await session.commit()
            await aio.set_item(session, "inventory", "summary", {"x": 1}, project="p1")
            await session.rollback()
            after_rollback = await aio.get_item(session, "inventory", "summary", project="p1")
            with pytest.raises(ValidationError, match="not JSON-serializable"):
                await aio.set_item(session, "inventory", "bad", {1, 2}, project="p1")
            await session.rollback()
            deleted = await aio.delete_items(session, project="p1")
            await session.commit()
            left = await aio.get_project_items(session, "p1")
        return written, item, stamp, names, site, after_rollback, deleted, left

    written, item, stamp, names, site, after_rollback, deleted, left = run(app["url"], body)
    assert written == 2 and item.data == {"products": 3} and stamp == item.updated_at
    assert names == ["by_category", "summary"] and site.data == [1, 2]
    assert after_rollback.data == {"products": 3}
    assert deleted == 2 and left == []
    with pytest.raises(ConfigError, match="needs an AsyncSession"):
        asyncio.run(aio.get_item(app["db"].engine, "inventory", "summary"))


def test_freshness_through_an_async_session(app):
    """`aio.freshness`: the built-at time, and a pending rebuild once a change is marked."""
    from cachework.cache.items import changes

    with app["db"].engine.begin() as conn:
        changes.mark(conn, [("p1", "inventory", "summary")], changes.now_ms(conn), 60_000, 0)

    async def body(Session, _engine):
        async with Session() as session:
            await aio.set_item(session, "inventory", "summary", {"products": 3}, project="p1")
            await session.commit()
            item = await aio.get_item(session, "inventory", "summary", project="p1")
            pending = await aio.freshness(session, "inventory", "summary", project="p1")
            other = await aio.freshness(session, "inventory", "by_category", project="p1")
        return item, pending, other

    item, pending, other = run(app["url"], body)
    assert pending.pending and pending.built_at == item.updated_at and pending.changed_at
    assert not other.pending and other.built_at is None and other.changed_at is None


def test_publish_into_the_outbox_or_the_log_and_the_read_barrier(app):
    runtime, other = app["runtime"], app["other"]
    view = aio.table(runtime, "categories")
    log = RedisLog.for_listener(app["env"]["CACHEWORK_REDIS_URL"])
    other_table = other.registry.table("categories")
    assert other_table.get(10)["name"] == "n10"

    async def body(Session, _engine):
        await view.get(10)
        async with Session() as session:  # untracked: publish() by hand, in the transaction
            await session.execute(sa.text("UPDATE categories SET name = 'p' WHERE id = 10"))
            await aio.publish("categories", [10], session=session)
            await session.rollback()
        rolled_back = outbox_count(app["db"].engine)
        async with Session() as session:
            await session.execute(sa.text("UPDATE categories SET name = 'q' WHERE id = 10"))
            await aio.publish("categories", [10], session=session)
            await session.commit()
        here = (await view.get(10))["name"]
        async with Session.begin() as session:  # straight into the log, after the commit
            await session.execute(sa.text("UPDATE categories SET name = 'r' WHERE id = 11"))
        event_id = await aio.publish("categories", [11], log=log)
        await aio.wait_for(other, event_id)
        with pytest.raises(TransientError, match="was not applied"):
            await aio.wait_for(other, "99999999999999-0", timeout=0.2)
        with pytest.raises(ConfigError, match="needs an AsyncSession"):
            await aio.publish("categories", [1], session=sessionmaker()())
        return rolled_back, here, event_id

    try:
        rolled_back, here, event_id = run(app["url"], body)
    finally:
        log.close()
    assert rolled_back == 0 and here == "q" and event_id
    assert other_table.get(11)["name"] == "r"  # no catch-up here: the barrier did it


def test_runtime_lifespan_catches_up_before_serving_and_stops_at_shutdown(app):
    """The runtime an app's lifespan starts is listening before the app serves, and its
    listener and its `aio_threads` are gone after shutdown (the leak check waits for them)."""
    settings = settings_of(app["env"])

    async def lifespan():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        tick = asyncio.ensure_future(ticker())
        async with runtime_lifespan(settings) as runtime:
            listening = runtime.listening
            name = (await aio.table(runtime, "categories").get(12))["name"]
        tick.cancel()
        return runtime, listening, name, ticks

    runtime, listening, name, ticks = asyncio.run(lifespan())
    assert listening and name == "n12" and ticks > 0  # the loop ran while it started
    assert not runtime.listening and runtime._aio_threads is None
