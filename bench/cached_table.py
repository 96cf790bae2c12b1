"""Benchmark: CachedTable reads and refreshes against baselines measured in the same run.

    .venv/bin/python bench/cached_table.py [--rows 100000] [--small 10000] [--pg-admin URL]

Creates a throwaway PostgreSQL database (dropped at the end), fills a table with `--rows`
records and compares:

- a point read by primary key from the cached table vs a plain dict lookup vs
  `session.get` on PostgreSQL (a fresh identity map each time, so it really queries);
- a 1,000-record range read over a timestamp index vs the same SELECT on PostgreSQL;
- the refresh of 1 invalid record in a `--rows` table vs in a `--small` table (it must not
  grow with the table) vs a full reload, counting the queries it makes.

Targets: point read <= 3 us, >= 300x faster than PostgreSQL, within 10x of the dict.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cachework.cache.tables.indexes import PrimaryKey, Range, Unique
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable

T0 = dt.datetime(2026, 1, 1)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(20), unique=True)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    price: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))


def per_op(func: Callable[[], None], ops: int, repeat: int = 5) -> float:
    """Best seconds per operation over `repeat` runs of `func` (which does `ops` ops)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        best = min(best, (time.perf_counter() - started) / ops)
    return best


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:8.1f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} us"
    return f"{seconds * 1e3:8.2f} ms"


def fill(engine: sa.Engine, rows: int) -> None:
    Base.metadata.create_all(engine)
    batch = []
    with engine.begin() as conn:
        for i in range(1, rows + 1):
            batch.append(
                {
                    "id": i,
                    "code": f"C{i:08d}",
                    "at": T0 + dt.timedelta(minutes=i),
                    "name": f"item {i}",
                    "price": Decimal(i % 10_000) / 100,
                }
            )
            if len(batch) == 10_000:
                conn.execute(sa.insert(Item), batch)
                batch = []
        if batch:
            conn.execute(sa.insert(Item), batch)
        conn.execute(sa.text("ANALYZE bench_items"))


def make_table(engine: sa.Engine, limit: int | None = None) -> CachedTable:
    select = sa.select(Item.__table__)
    if limit is not None:
        select = select.where(Item.id <= limit)
    return CachedTable(
        [PrimaryKey("id"), Unique("code"), Range("at")],
        SelectSource(engine, select),
        name=f"bench_items_{limit or 'all'}",
    )


def refresh_cost(table: CachedTable, keys: list[int]) -> tuple[float, float]:
    """Seconds per (invalidate one record + the read that refreshes it), queries per refresh."""
    fetches = table.source.fetches

    def run() -> None:
        for key in keys:
            table.invalidate_keys([key])
            assert table.get(key) is not None

    seconds = per_op(run, len(keys), repeat=3)
    return seconds, (table.source.fetches - fetches) / (3 * len(keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"cachework_bench_{os.getpid()}"
    with psycopg.connect(args.pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(f"{base}/{name}")
    try:
        return run(engine, args)
    finally:
        engine.dispose()
        with psycopg.connect(args.pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(engine: sa.Engine, args: argparse.Namespace) -> int:
    rows, rng = args.rows, random.Random(7)
    print(
        f"cached table benchmark: {rows:,} records on PostgreSQL, Python {sys.version.split()[0]}"
    )
    table, load_seconds = fill_and_load(engine, rows)
    cached, bare, pg = point_reads(engine, table, rows, rng)
    range_reads(engine, table, rows, rng)
    big_refresh, small_refresh, big_queries = refreshes(engine, table, args, rng, load_seconds)
    checks = {
        "point read <= 3 us": cached <= 3e-6,
        "point read >= 300x faster than PG session.get": pg / cached >= 300,
        "point read within 10x of a bare dict": cached / bare <= 10,
        "refresh is one small query": big_queries <= 1.01,
        "refresh cost independent of table size (within 2x)": big_refresh / small_refresh < 2,
    }
    print("\ntargets")
    for label, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    return 0 if all(checks.values()) else 1


def fill_and_load(engine: sa.Engine, rows: int) -> tuple[CachedTable, float]:
    """Fill PostgreSQL, then load the whole cached table; its load time is the full reload."""
    started = time.perf_counter()
    fill(engine, rows)
    print(f"  filled PostgreSQL in {time.perf_counter() - started:.1f}s")
    table = make_table(engine)
    started = time.perf_counter()
    table.load()
    load_seconds = time.perf_counter() - started
    print(f"  loaded {rows:,} records into the cached table in {load_seconds:.2f}s")
    return table, load_seconds


def point_reads(
    engine: sa.Engine, table: CachedTable, rows: int, rng: random.Random
) -> tuple[float, float, float]:
    """Seconds per point read: cached table, plain dict, PostgreSQL `session.get`."""
    keys = [rng.randrange(1, rows + 1) for _ in range(100_000)]
    plain = {r["id"]: r for r in table.get_records("id", everything=True)}
    get, plain_get = table.get, plain.get

    def cached_reads() -> None:
        for key in keys:
            get(key)

    def dict_reads() -> None:
        for key in keys:
            plain_get(key)

    pg_keys = keys[:1_000]

    def pg_reads() -> None:
        with Session(engine) as session:
            for key in pg_keys:
                session.get(Item, key)
                session.expunge_all()  # no identity-map hits: every get queries

    cached = per_op(cached_reads, len(keys))
    bare = per_op(dict_reads, len(keys))
    pg = per_op(pg_reads, len(pg_keys), repeat=3)
    print("\npoint read by primary key")
    print(f"  cached table get()     {fmt(cached)}")
    print(f"  plain dict .get()      {fmt(bare)}   cached/dict = {cached / bare:.1f}x")
    print(f"  session.get (PG)       {fmt(pg)}   PG/cached = {pg / cached:,.0f}x")
    return cached, bare, pg


def range_reads(engine: sa.Engine, table: CachedTable, rows: int, rng: random.Random) -> None:
    """1,000-record reads over the timestamp index against the same SELECT on PostgreSQL."""
    starts = [rng.randrange(0, rows - 1_000) for _ in range(50)]

    def bounds(start: int) -> tuple[dt.datetime, dt.datetime]:
        return T0 + dt.timedelta(minutes=start + 1), T0 + dt.timedelta(minutes=start + 1_001)

    def cached_ranges() -> None:
        for start in starts:
            ge, lt = bounds(start)
            assert len(table.get_records("at", ge=ge, lt=lt)) == 1_000

    query = sa.select(Item.__table__).where(
        Item.at >= sa.bindparam("ge"), Item.at < sa.bindparam("lt")
    )

    def pg_ranges() -> None:
        with engine.connect() as conn:
            for start in starts:
                ge, lt = bounds(start)
                assert len(conn.execute(query, {"ge": ge, "lt": lt}).all()) == 1_000

    cached_range = per_op(cached_ranges, len(starts))
    pg_range = per_op(pg_ranges, len(starts), repeat=3)
    print("\n1,000-record range read over a timestamp")
    print(f"  cached table           {fmt(cached_range)}")
    print(f"  same SELECT (PG)       {fmt(pg_range)}   PG/cached = {pg_range / cached_range:.1f}x")


def refreshes(
    engine: sa.Engine,
    table: CachedTable,
    args: argparse.Namespace,
    rng: random.Random,
    load_seconds: float,
) -> tuple[float, float, float]:
    """Refresh of one invalid record in the big and the `--small` table, against one PG
    point SELECT and the full reload; returns (big, small seconds, big queries/refresh)."""
    small = make_table(engine, limit=args.small)
    small.load()
    refresh_keys = [rng.randrange(1, args.small + 1) for _ in range(200)]
    big_refresh, big_queries = refresh_cost(table, refresh_keys)
    small_refresh, small_queries = refresh_cost(small, refresh_keys)

    def pg_point() -> None:
        with engine.connect() as conn:
            for key in refresh_keys:
                conn.execute(sa.select(Item.__table__).where(Item.id == key)).one()

    one_query = per_op(pg_point, len(refresh_keys), repeat=3)
    print("\nrefresh of 1 invalid record (invalidate + the read that refreshes it)")
    for size, seconds, queries in (
        (args.rows, big_refresh, big_queries),
        (args.small, small_refresh, small_queries),
    ):
        print(f"  in {size:>9,} records   {fmt(seconds)}   queries/refresh = {queries:.2f}")
    print(f"  one PG point SELECT    {fmt(one_query)}")
    print(f"  full reload            {fmt(load_seconds)}")
    print(
        f"  big/small = {big_refresh / small_refresh:.2f}x, refresh/one query = "
        f"{big_refresh / one_query:.2f}x, reload/refresh = {load_seconds / big_refresh:,.0f}x"
    )
    return big_refresh, small_refresh, big_queries


if __name__ == "__main__":
    sys.exit(main())
