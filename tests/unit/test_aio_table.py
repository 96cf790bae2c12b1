"""The async view of a cached table (`cachework.cache.aio.table`): reads memory answers stay on the
loop, a refresh runs in cachework's threads and never blocks the loop, and concurrent
readers of an invalidated table share one refresh. SQLite in a file; the source's query
is held mid-read by the test (`GatedSource`), so "the loop is not blocked" is the loop
running other coroutines while a refresh cannot finish, not a timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from cachework.cache import aio
from cachework.cache.aio import tables as aio_tables
from cachework.cache.tables.full_table import FullTableCache
from cachework.database import make_engine as make_worker_engine
from tests.cached_table_helpers import items, make_engine, make_table, row, write

READERS = 50


@pytest.fixture
def engine(sqlite_url) -> Iterator:
    make_engine(sqlite_url, n=0).dispose()
    engine = make_worker_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(items.insert(), [row(i) for i in range(1, 101)])
    yield engine
    engine.dispose()


class Counting:
    """Counts a source's queries (each `_run` is one SELECT)."""

    def __init__(self, source) -> None:
        self.queries = 0
        run = source._run

        def counted(query):
            self.queries += 1
            return run(query)

        source._run = counted


def test_a_valid_record_is_read_on_the_loop_without_a_thread(engine, monkeypatch):
    table = make_table(engine)
    table.get(1)  # loaded
    view = aio.table(table)

    async def no_thread(*_args, **_kwargs):
        raise AssertionError("a read memory answers went to a thread")

    monkeypatch.setattr(aio_tables, "off_loop", no_thread)

    async def reads():
        return (
            await view.get(7),
            await view.get_records("code", "c8"),
            await view.get_records("grp", 1),
            await view.get(10_000),  # no such key: memory says so (covered)
        )

    one, by_code, by_grp, missing = asyncio.run(reads())
    assert one["name"] == "n7.0" and by_code[0]["id"] == 8
    assert {r["id"] for r in by_grp} == {i for i in range(1, 101) if i % 3 == 1}
    assert missing is None
    assert aio.table(table) is view  # one view per table: its readers share refreshes


def test_readers_of_an_invalidated_table_share_one_refresh_and_the_loop_runs_meanwhile(engine):
    table = make_table(engine, gated=True)
    counting = Counting(table.source)
    table.get(1)
    for i in (1, 2, 3):
        write(engine, i, name=f"new{i}")
    table.invalidate_keys([1, 2, 3])
    queries = counting.queries
    table.source.hold = True  # the refresh's query runs, then waits for the test
    view = aio.table(table)
    prepares = []
    prepare = table.prepare
    table.prepare = lambda: prepares.append(1) or prepare()  # one thread per refresh

    async def scenario():
        readers = [asyncio.ensure_future(view.get(1 + i % 3)) for i in range(READERS)]
        entered = await asyncio.to_thread(table.source.entered.wait, 10)
        assert entered
        ticks = 0
        for _ in range(20):  # the loop runs while the refresh is held
            await asyncio.sleep(0.001)
            ticks += 1
        assert not any(r.done() for r in readers)
        table.source.release.set()
        return ticks, await asyncio.gather(*readers)

    ticks, records = asyncio.run(scenario())
    assert ticks == 20
    assert [r["name"] for r in records] == [f"new{1 + i % 3}" for i in range(READERS)]
    assert counting.queries - queries == 1  # one shared refresh query for 50 readers
    assert len(prepares) == 1  # ... waited for in one thread, not one thread per reader


def test_a_failed_refresh_reaches_every_reader_and_the_next_read_retries(engine):
    table = make_table(engine)
    table.get(1)
    write(engine, 1, name="later")
    table.invalidate_keys([1])
    view = aio.table(table)
    fail = threading.Event()
    fail.set()
    run = table.source._run

    def flaky(query):
        if fail.is_set():
            raise ConnectionError("database unreachable (test)")
        return run(query)

    table.source._run = flaky

    async def readers():
        return await asyncio.gather(*(view.get(1) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(readers())
    assert all(isinstance(r, ConnectionError) for r in results), results
    fail.clear()
    assert asyncio.run(view.get(1))["name"] == "later"


def test_a_cancelled_reader_leaves_the_shared_refresh_to_the_others(engine):
    table = make_table(engine, gated=True)
    table.get(1)
    write(engine, 1, name="after")
    table.invalidate_keys([1])
    table.source.hold = True
    view = aio.table(table)

    async def scenario():
        first = asyncio.ensure_future(view.get(1))
        second = asyncio.ensure_future(view.get(1))
        assert await asyncio.to_thread(table.source.entered.wait, 10)
        first.cancel()
        table.source.release.set()
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(scenario())
    assert isinstance(first, asyncio.CancelledError)
    assert second["name"] == "after"


def test_an_uncovered_read_goes_to_the_source_in_a_thread(engine):
    table = make_table(engine, autoload=False)
    table.load("score", ge=0, lt=500)  # ids 1..49
    view = aio.table(table)
    threads: list[str] = []
    run = table.source._run

    def noted(query):
        threads.append(threading.current_thread().name)
        return run(query)

    table.source._run = noted
    record = asyncio.run(view.get(80))
    assert record["id"] == 80 and threads and threads[0] != threading.main_thread().name


def test_a_full_table_cache_by_cache_key(engine):
    cache = FullTableCache(engine, items, key_column="code", name="items")
    view = aio.table(cache)

    async def reads():
        return await view.by_cache_key("c5"), await view.by_cache_key("nope"), await view.by_id(6)

    (found, new), (missing, _), by_id = asyncio.run(reads())
    assert found["id"] == 5 and not new and missing is None and by_id["code"] == "c6"
    with pytest.raises(TypeError, match="not a FullTableCache"):
        asyncio.run(aio.table(make_table(engine)).by_cache_key("c5"))
