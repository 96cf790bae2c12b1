"""Benchmark: cachework's async face (`cachework.cache.aio`) against the blocking way and the sync
calls, measured in the same run (issue 21).

    .venv/bin/python bench/aio.py [--requests 50] [--hold 3] [--reads 200000]
                                  [--rounds 7] [--flushes 1000] [--pg-admin URL]

Creates a throwaway PostgreSQL database (dropped at the end) with the demo's schema,
cachework's tables and `--flushes` x 10 categories, starts a private redis-server (stopped
at the end), and measures:

- event-loop lag while records are refreshed: a 1 ms ticker coroutine (`asyncio.sleep`
  in a loop, recording how late each tick wakes) runs while `--requests` concurrent
  requests read records of a `CachedTable` just invalidated, whose refresh query is held
  `--hold` seconds in PostgreSQL (the source's WHERE calls a function that runs
  `pg_sleep` when a flag row says so). Through `aio.table(table)` (`await .get(key)`,
  `await .get_records("code", ...)`) against the naive way (the sync `table.get` called in
  the `async def`, which blocks the loop); every request must see the new value, and the
  async requests must share one refresh query;
- the cost of an async read of a valid record: `--reads` x `await view.get(k)` in one
  coroutine against the same keys through `table.get(k)` in a plain loop, interleaved
  rounds;
- a tracked async commit loop: `--flushes` transactions, each one flush of 10 updated
  loaded objects, through an `async_sessionmaker` tracked by `cachework.cache.invalidation.track`
  against an untracked one (on an engine of its own), on asyncpg and on psycopg's async
  driver, without and with a started runtime taking the commits (read-your-writes: its
  cached `categories` invalidated before `commit()` returns, the rows relayed to the
  Redis Stream by its sweeper thread), interleaved rounds.

Targets: lag p99 and max under 5 ms through `cachework.cache.aio` (the naive way: about `--hold`);
all reads fresh, one shared refresh query; async read <= 1.5x the sync read; the tracked
async commit loop <= 1.3x of untracked, per driver, with and without the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tracking import outbox_rows
from cachework.cache import aio
from cachework.cache.invalidation import outbox, track
from cachework.cache.tables.indexes import PrimaryKey, Unique
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable
from cachework.importers.bootstrap import bootstrap
from cachework.settings import load_settings
from cachework.worker.runtime import Runtime
from cachework.worker.schema import create_tables
from tests.invalidation_helpers import OwnRedis, wait_until

TICK = 0.001  # the ticker's sleep
STREAM = "cachework:invalidations"


class Base(DeclarativeBase):
    pass


class Row(Base):
    """The demo's `categories` table, mapped here without its versioning (Continuum), so
    the commit loop times the app's write and tracking, nothing else."""

    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(50), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f} ms"


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p99, max."""
    ordered = sorted(values)
    return (
        statistics.median(ordered),
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        ordered[-1],
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- the database ---------------------------------------------------------------------------


def fill(engine: sa.Engine, rows: int) -> None:
    """The demo's schema and cachework's tables, `rows` categories, and the hold: a flag
    row and a function the held source's WHERE calls, which sleeps that many seconds in
    the server (STABLE: evaluated once per statement, not per row)."""
    create_tables(engine, bootstrap(("demo.models",)))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO categories (id, code, name) "
                "SELECT g, 'c' || g, 'n' || g FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
        conn.execute(sa.text("CREATE TABLE bench_delay (seconds float8 NOT NULL)"))
        conn.execute(sa.text("INSERT INTO bench_delay VALUES (0)"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION bench_hold() RETURNS boolean LANGUAGE plpgsql STABLE AS $$ "
                "BEGIN PERFORM pg_sleep(seconds) FROM bench_delay; RETURN true; END $$"
            )
        )
        conn.execute(sa.text("ANALYZE categories"))


def set_hold(engine: sa.Engine, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE bench_delay SET seconds = :s"), {"s": seconds})


# --- 1. event-loop lag under refreshing reads -----------------------------------------------


def held_table(engine: sa.Engine) -> CachedTable:
    """Categories by id and code, whose every source query waits in `bench_hold()`."""
    select = sa.select(Row.__table__).where(sa.func.bench_hold(type_=sa.Boolean))
    return CachedTable(
        [PrimaryKey("id"), Unique("code")], SelectSource(engine, select), name="bench_held"
    )


async def ticking(work: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any, float]:
    """Run `work()` beside a 1 ms ticker: how late each tick woke (seconds), the work's
    result and its wall time."""
    lags: list[float] = []
    done = False

    async def tick() -> None:
        while not done:
            started = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(time.perf_counter() - started - TICK)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)  # ticking before the requests start
    started = time.perf_counter()
    try:
        result = await work()
    finally:
        wall = time.perf_counter() - started
        await asyncio.sleep(0.05)
        done = True
        await ticker
    return lags, result, wall


def code_of(key: int) -> str:
    return f"c{key}"


async def async_request(view: aio.AsyncTable, key: int) -> str:
    """A request reading its record through the async view, by id or by code."""
    if key % 2:
        return (await view.get(key))["name"]
    return (await view.get_records("code", code_of(key)))[0]["name"]


async def naive_request(table: CachedTable, key: int) -> str:
    """The same request calling the sync table in the `async def` (blocks the loop)."""
    if key % 2:
        return table.get(key)["name"]
    return table.get_records("code", code_of(key))[0]["name"]


def refreshing_reads(engine: sa.Engine, requests: int, hold: float) -> dict[str, bool]:
    table = held_table(engine)
    table.load()
    view = aio.table(table)
    keys = list(range(1, requests + 1))
    idle, _result, _wall = asyncio.run(ticking(lambda: asyncio.sleep(1.0)))
    print(
        f"\nevent-loop lag: a {TICK * 1e3:.0f} ms ticker while {requests} concurrent requests "
        f"read records just invalidated, the refresh query held {hold:g} s in PostgreSQL"
    )
    p50, p99, top = percentiles(idle)
    print(f"  idle loop (no requests)   p50 {ms(p50)}  p99 {ms(p99)}  max {ms(top)}")
    checks: dict[str, bool] = {}
    for mode in ("cachework.cache.aio", "naive"):
        value = f"{mode}-{time.monotonic_ns()}"
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE categories SET name = :v WHERE id <= :n"),
                {"v": value, "n": requests},
            )
        set_hold(engine, hold)
        table.invalidate_keys(keys)
        before = table.stats()["refreshes"], table.source.fetches
        request = (
            functools.partial(async_request, view)
            if mode == "cachework.cache.aio"
            else functools.partial(naive_request, table)
        )
        try:
            lags, names, wall = asyncio.run(
                ticking(lambda request=request: asyncio.gather(*map(request, keys)))
            )
        finally:
            set_hold(engine, 0)
        refreshes = table.stats()["refreshes"] - before[0]
        queries = table.source.fetches - before[1]
        fresh = sum(name == value for name in names)
        p50, p99, top = percentiles(lags)
        print(
            f"  {mode:9s} ({len(lags):5,} ticks) p50 {ms(p50)}  p99 {ms(p99)}  max {ms(top)}   "
            f"requests done in {wall:.2f} s, {fresh}/{requests} fresh, "
            f"{refreshes} refresh(es), {queries} source quer{'y' if queries == 1 else 'ies'}"
        )
        if mode == "cachework.cache.aio":
            checks["cachework.cache.aio: loop lag p99 and max under 5 ms while refreshing"] = (
                p99 < 5e-3 and top < 5e-3
            )
            checks["cachework.cache.aio: every request read the new value"] = fresh == requests
            checks["cachework.cache.aio: one refresh query shared by the requests"] = (
                refreshes == 1 and queries == 1
            )
    return checks


# --- 2. the cost of an async read of a valid record ------------------------------------


def read_cost(engine: sa.Engine, rows: int, reads: int, rounds: int) -> dict[str, bool]:
    table = CachedTable(
        [PrimaryKey("id"), Unique("code")],
        SelectSource(engine, sa.select(Row.__table__)),
        name="bench_reads",
    )
    table.load()
    view = aio.table(table)
    rng = random.Random(7)
    keys = [rng.randrange(1, rows + 1) for _ in range(reads)]

    def sync_reads() -> float:
        get = table.get
        started = time.perf_counter()
        for key in keys:
            get(key)
        return time.perf_counter() - started

    async def async_reads() -> float:
        get = view.get
        started = time.perf_counter()
        for key in keys:
            await get(key)
        return time.perf_counter() - started

    loop = asyncio.new_event_loop()
    try:
        sample = keys[:100]
        same = [loop.run_until_complete(view.get(k)) for k in sample] == [
            table.get(k) for k in sample
        ]
        times: dict[str, list[float]] = {"sync": [], "async": []}
        for _round in range(rounds):  # interleaved: both see the same machine state
            times["sync"].append(sync_reads())
            times["async"].append(loop.run_until_complete(async_reads()))
    finally:
        loop.close()
    floor = coroutine_floor(dict(table._valid), keys, rounds)
    sync_s, async_s = min(times["sync"]), min(times["async"])
    paired = statistics.median(a / s for s, a in zip(times["sync"], times["async"], strict=True))
    print(
        f"\nread of a valid record: {reads:,} reads of {rows:,} records ({rounds} interleaved "
        "rounds; best against best, and the median of the rounds' ratios)"
    )
    print(f"  table.get(k)              {sync_s * 1e9 / reads:7.1f} ns/read")
    print(
        f"  await view.get(k)         {async_s * 1e9 / reads:7.1f} ns/read   "
        f"async/sync = {async_s / sync_s:.2f}x (median {paired:.2f}x)   same records: {same}"
    )
    print(
        f"  floor: `await f(k)`, an async def returning dict.get(k), {floor[1] * 1e9:.1f} ns "
        f"against dict.get(k) {floor[0] * 1e9:.1f} ns: {(floor[1] - floor[0]) * 1e9:.1f} ns "
        "per await of a coroutine"
    )
    return {"await view.get(k) <= 1.5x table.get(k)": async_s / sync_s <= 1.5 and same}


def coroutine_floor(records: dict, keys: list[int], rounds: int) -> tuple[float, float]:
    """Seconds per dict.get(k), and per `await` of a coroutine doing only that: what any
    awaited read adds to a sync one, whatever it does."""
    get = records.get

    async def only_get(key: int) -> Any:
        return get(key)

    def plain() -> float:
        started = time.perf_counter()
        for key in keys:
            get(key)
        return time.perf_counter() - started

    async def awaited() -> float:
        started = time.perf_counter()
        for key in keys:
            await only_get(key)
        return time.perf_counter() - started

    loop = asyncio.new_event_loop()
    try:
        plain_s = min(plain() for _ in range(rounds))
        awaited_s = min(loop.run_until_complete(awaited()) for _ in range(rounds))
    finally:
        loop.close()
    return plain_s / len(keys), awaited_s / len(keys)


# --- 3. the tracked async commit loop ----------------------------------------------------


@contextlib.contextmanager
def taking_commits(runtime: Runtime, on: bool) -> Iterator[None]:
    """The started runtime takes this process's commits (read-your-writes) only inside."""
    if on:
        outbox.add_sink(runtime)
    try:
        yield
    finally:
        outbox.remove_sink(runtime)


async def update_run(
    factory: Any, rows: int, flushes: int, counter: list[int]
) -> tuple[Any, Callable[[], Awaitable[float]]]:
    """`flushes` transactions each updating 10 objects loaded once, in one open session
    (returned, for the caller to close), and the run's seconds."""
    session = factory()
    query = sa.select(Row).where(Row.id <= rows).order_by(Row.id)
    objects = (await session.scalars(query)).all()
    await session.commit()

    async def run() -> float:
        counter[0] += 1
        started = time.perf_counter()
        for i in range(flushes):
            for obj in objects[i * 10 : i * 10 + 10]:
                obj.name = f"n{counter[0]}"
            await session.commit()  # one flush of 10 rows, one transaction
        return time.perf_counter() - started

    return session, run


async def driver_loop(
    url: sa.URL, engine: sa.Engine, runtime: Runtime, flushes: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per round of each mode on the async driver of `url`, interleaved."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    plain_engine, tracked_engine = create_async_engine(url), create_async_engine(url)
    plain = async_sessionmaker(plain_engine, expire_on_commit=False)
    tracked = async_sessionmaker(tracked_engine, expire_on_commit=False)
    tracking = track(tracked, runtime)  # the runtime's declared tables say what to track
    outbox.remove_sink(runtime)  # each mode says whether the runtime takes the commits
    client = runtime.redis
    cached = runtime.registry.table("categories").table
    counter = [0]
    runs = {}
    sessions = []
    try:
        for mode, factory in (("off", plain), ("on", tracked), ("on+runtime", tracked)):
            session, runs[mode] = await update_run(factory, flushes * 10, flushes, counter)
            sessions.append(session)
        times: dict[str, list[float]] = {mode: [] for mode in runs}
        for _round in range(rounds):
            for mode, run in runs.items():
                cached.refresh_invalid()  # the runtime's table valid again, off the clock
                events, relayed = tracking.stats["events"], client.xlen(STREAM)
                with taking_commits(runtime, mode == "on+runtime"):
                    times[mode].append(await run())
                if mode == "on+runtime":  # the sweeper relays and deletes its rows
                    wait_until(lambda: outbox_rows(engine, clear=False) == 0, timeout=10)
                    times.setdefault("relayed", []).append(client.xlen(STREAM) - relayed)
                times.setdefault(f"events {mode}", []).append(tracking.stats["events"] - events)
                outbox_rows(engine)
        return times
    finally:
        for session in sessions:
            await session.close()
        tracking.stop()
        await plain_engine.dispose()
        await tracked_engine.dispose()


def commit_loop(engine: sa.Engine, runtime: Runtime, flushes: int, rounds: int) -> dict[str, bool]:
    print(
        f"\ntracked async commit loop: {flushes:,} transactions of one flush of 10 updated "
        f"rows ({rounds} interleaved rounds; x/off: best against best, and the median of "
        "the rounds' ratios)\n  off: an untracked async_sessionmaker (its own engine); on: "
        "tracked, no runtime takes the commits (the outbox row only); on+runtime: a started "
        "runtime invalidates its cached categories before commit() returns and its sweeper "
        "thread relays the rows to the Redis Stream"
    )
    checks: dict[str, bool] = {}
    for driver in ("asyncpg", "psycopg"):
        url = engine.url.set(drivername=f"postgresql+{driver}")
        times = asyncio.run(driver_loop(url, engine, runtime, flushes, rounds))
        events = times.get("events on", [0])[-1]
        relayed = min(times.get("relayed", [0]))
        print(
            f"  {driver}: outbox rows per tracked run {events:,}, relayed to the stream "
            f"per on+runtime run {relayed:,} (fewest)"
        )
        off_s = min(times["off"])
        for mode in ("off", "on", "on+runtime"):
            mode_s = min(times[mode])
            paired = statistics.median(
                t / o for o, t in zip(times["off"], times[mode], strict=True)
            )
            print(
                f"    {mode:10s} {mode_s * 1e3 / flushes:6.3f} ms/transaction   "
                f"x/off = {mode_s / off_s:.2f}x (median {paired:.2f}x)"
            )
            if mode != "off":
                checks[f"{driver} {mode}: tracked commit loop <= 1.3x off"] = mode_s / off_s <= 1.3
        checks[f"{driver}: every tracked commit wrote its event, and it was relayed"] = (
            events == flushes and relayed == flushes
        )
    return checks


# --- the run --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="lag: concurrent requests")
    parser.add_argument("--hold", type=float, default=3.0, help="lag: seconds of the refresh")
    parser.add_argument("--reads", type=int, default=200_000, help="read cost: reads per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--flushes", type=int, default=1_000, help="commit loop: transactions")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:  # each step runs even if an earlier one fails
        url = throwaway_database(args.pg_admin, cleanup)
        engine = sa.create_engine(url)
        cleanup.callback(engine.dispose)
        folder = Path(tempfile.mkdtemp(prefix="cachework-bench-aio-"))
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        server = OwnRedis(folder / "redis")
        cleanup.callback(server.stop)
        server.start()
        rows = max(args.flushes * 10, args.requests, 1_000)
        print(f"async face benchmark: PostgreSQL, Python {sys.version.split()[0]}")
        fill(engine, rows)
        checks = refreshing_reads(engine, args.requests, args.hold)
        checks.update(read_cost(engine, rows, args.reads, args.rounds))
        runtime = Runtime(load_settings(runtime_env(url, server.url, folder)))
        cleanup.callback(runtime.close)  # its threads (aio_threads too) and connections
        runtime.start()
        runtime.registry.table("categories").get(1)  # loaded: commits invalidate records
        checks.update(commit_loop(engine, runtime, args.flushes, args.rounds))
        print("\ntargets")
        for label, ok in checks.items():
            print(f"  {verdict(ok)}  {label}")
        return 0 if all(checks.values()) else 1


def throwaway_database(admin: str, cleanup: contextlib.ExitStack) -> str:
    """A new database (dropped when `cleanup` closes); its SQLAlchemy URL."""
    name = f"cachework_bench_aio_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    cleanup.callback(drop)
    base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def runtime_env(url: str, redis_url: str, folder: Path) -> dict[str, str]:
    """The web process's settings: this database, the private Redis, the demo's cached
    tables (`categories`), schedules off."""
    return {
        "CACHEWORK_DATABASE_URL": url,
        "CACHEWORK_REDIS_URL": redis_url,
        "CACHEWORK_DATA_DIR": str(folder / "data"),
        "CACHEWORK_IMPORT_SCHEDULE": "off",
        "CACHEWORK_SYNC_SCHEDULE": "off",
    }


if __name__ == "__main__":
    sys.exit(main())
