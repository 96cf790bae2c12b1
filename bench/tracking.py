"""Benchmark: automatic invalidation against the same work with tracking off, same run.

    .venv/bin/python bench/tracking.py [--flushes 1000] [--rows 100000] [--rounds 7]
                                      [--pg-admin URL]

Creates a throwaway PostgreSQL database (dropped at the end) with a `--rows` table and
cachework's outbox, and compares:

- an ORM write-heavy loop: `--flushes` transactions, each one flush of 10 rows (updates of
  loaded objects; then inserts of new ones), with a session factory tracked by
  `cachework.cache.invalidation.track` against an untracked one: tracking with no runtime started
  (the outbox row only), with a started runtime (read-your-writes: the commit applies its
  row in the process before it returns, and the runtime's sweeper thread relays it to a
  Redis Stream, off the commit's path), and with the
  outbox INSERT in a round trip of its own (as on drivers other than psycopg), interleaved;
- commit-to-visible latency in another process (p50/p99/max): from a tracked commit's
  start to the event's arrival in a process tailing the stream (XREAD BLOCK), with the
  commit's own relay against the workers' relay alone (a pass every 0.2 s), with and
  without a `--backlog`-row outbox backlog;
- a `--rows`-row UPDATE (and a 1,000-row one, whose keys the event names) with the
  PostgreSQL invalidation triggers installed against without, counting outbox rows.

Targets: tracking <= 1.3x on the ORM loop, read-your-writes included; a backlog does not
delay a fresh commit's visibility; the trigger writes one outbox row per statement.
A private redis-server on a free loopback port is started for the stream (and stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from cachework.cache.invalidation import RedisLog, Relay, RelayLoop, outbox, track
from cachework.cache.invalidation import tracking_outbox as tracking_module
from cachework.cache.invalidation import triggers as db_triggers
from cachework.cache.invalidation.tracking import dependencies
from cachework.schema import invalidation_outbox
from tests.invalidation_helpers import OwnRedis

DEPS = {"bench_items": {"bench_items": "id"}}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(20), unique=True)
    name: Mapped[str] = mapped_column(sa.String(50))


def best(func: Callable[[], None], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times)


def outbox_rows(engine: sa.Engine, clear: bool = True) -> int:
    with engine.begin() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(invalidation_outbox))
        count = count.scalar_one()
        if clear:
            conn.execute(invalidation_outbox.delete())
    return count


def vacuum(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE bench_items"))


def fill(engine: sa.Engine, rows: int) -> None:
    Base.metadata.create_all(engine)
    invalidation_outbox.create(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO bench_items (id, code, name) "
                "SELECT g, 'C' || g, 'item ' || g FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
    vacuum(engine)


@contextlib.contextmanager
def separate_insert(on: bool) -> Iterator[None]:
    """Tracking as on drivers other than psycopg: the outbox INSERT in a round trip of its
    own before the COMMIT."""
    if not on:
        yield
        return
    piggyback = tracking_module._insert_then_commit

    def plain(conn: sa.Connection, rows: list[str]) -> list[int]:
        insert = invalidation_outbox.insert().returning(invalidation_outbox.c.id)
        return [conn.execute(insert, {"data": row}).scalar_one() for row in rows]

    tracking_module._insert_then_commit = plain
    try:
        yield
    finally:
        tracking_module._insert_then_commit = piggyback


class Sink:
    """A started runtime as `outbox.committed` sees it: no cached tables here (nothing
    to apply), its log a Redis Stream the commit's rows are relayed to."""

    def __init__(self, log: RedisLog) -> None:
        self.log = log
        self.sweeper = outbox.Sweeper().start()  # deletes relayed rows off the commit's path

    def apply_committed(self, datas: list[str]) -> None:
        pass

    def invalidation_log(self) -> RedisLog:
        return self.log


@contextlib.contextmanager
def started_runtime(sink: Sink | None) -> Iterator[None]:
    if sink is None:
        yield
        return
    outbox.add_sink(sink)
    try:
        yield
    finally:
        outbox.remove_sink(sink)


def update_run(
    factory: sessionmaker, ids: list[int], flushes: int, counter: list[int], model: type = Item
) -> Callable[[], None]:
    """`flushes` transactions each updating 10 objects of `model` (any class with `id`
    and `name`) loaded once, in one open session (kept as `run.session`, for the caller
    to close)."""
    session = factory()
    objects = session.scalars(sa.select(model).where(model.id.in_(ids)).order_by(model.id)).all()
    session.commit()

    def run() -> None:
        counter[0] += 1
        for i in range(flushes):
            for obj in objects[i * 10 : i * 10 + 10]:
                obj.name = f"n{counter[0]}"
            session.commit()  # one flush of 10 rows, one transaction

    run.session = session  # type: ignore[attr-defined]
    return run


def insert_run(
    factory: sessionmaker,
    base: int,
    flushes: int,
    counter: list[int],
    new_row: Callable[[int], object] | None = None,
) -> Callable[[], None]:
    """`flushes` transactions each inserting 10 new rows, ids fresh on every call;
    `new_row(id)` makes one (default: an `Item`)."""
    new_row = new_row or (lambda key: Item(id=key, code=f"N{key}", name="new"))

    def run() -> None:
        counter[0] += 1
        start = base + counter[0] * flushes * 10
        with factory() as session:
            for i in range(flushes):
                session.add_all(new_row(start + j) for j in range(i * 10, i * 10 + 10))
                session.commit()

    return run


def orm_loop(engine: sa.Engine, flushes: int, rounds: int, sink: Sink) -> None:
    plain = sessionmaker(engine, expire_on_commit=False)
    tracked = sessionmaker(engine, expire_on_commit=False)
    tracking = track(tracked, DEPS)
    ids = list(range(1, flushes * 10 + 1))
    counter = [0]
    cases = [
        (
            "update 10 loaded rows",
            *(update_run(f, ids, flushes, counter) for f in (plain, tracked, tracked, tracked)),
        ),
        (
            "insert 10 new rows",
            *(
                insert_run(f, base, flushes, counter)
                for f, base in (
                    (plain, 10_000_000),
                    (tracked, 50_000_000),
                    (tracked, 70_000_000),
                    (tracked, 90_000_000),
                )
            ),
        ),
    ]
    print(
        f"\nORM write-heavy loop: {flushes:,} transactions of one flush of 10 rows "
        f"({rounds} interleaved rounds; x/off: best against best, and the median of the "
        "rounds' ratios)\n  on: the outbox row goes with the COMMIT (no runtime started); "
        "on+relay: a started runtime (read-your-writes: the commit invalidates in the "
        "process before it returns, its sweeper thread relays the row); 2 trips: the "
        "outbox INSERT as its own statement before the COMMIT (other drivers)"
    )
    for label, *runs in cases:
        modes = dict(zip(("off", "on", "on+relay", "2 trips"), runs, strict=True))
        times, written = time_modes(engine, modes, rounds, sink)
        report_modes(label, times, written["on"], flushes)
        for run in runs:
            session = getattr(run, "session", None)
            if session is not None:
                session.close()
    print(f"  tracking stats: {tracking.stats}")
    tracking.stop()


def time_modes(
    engine: sa.Engine, modes: dict[str, Callable[[], None]], rounds: int, sink: Sink
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds of each mode's run per round, interleaved, and the outbox rows it wrote."""
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    written: dict[str, int] = {}
    for _round in range(rounds):  # interleaved: all see the same machine state
        for mode, run in modes.items():
            relay = sink if mode == "on+relay" else None
            with separate_insert(mode == "2 trips"), started_runtime(relay):
                times[mode].append(best(run, 1))
            written[mode] = outbox_rows(engine)
    return times, written


def report_modes(label: str, times: dict[str, list[float]], rows: int, flushes: int) -> None:
    """Each mode against `off`: best against best, and the median of the rounds' ratios."""
    print(f"  {label}: outbox rows per tracked run {rows:,} ({rows / flushes:.1f} per transaction)")
    off_s = min(times["off"])
    for mode in times:
        mode_s = min(times[mode])
        paired = statistics.median(t / o for o, t in zip(times["off"], times[mode], strict=True))
        print(
            f"    {mode:8s} {mode_s * 1e3 / flushes:6.3f} ms/transaction   "
            f"x/off = {mode_s / off_s:.2f}x (median {paired:.2f}x)"
        )


READER = r"""
import sys, time, redis
client = redis.Redis.from_url(sys.argv[1])
last = "$"
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    for _key, entries in client.xread({"cachework:invalidations": last}, block=200) or []:
        for entry_id, fields in entries:
            last = entry_id
            print(time.time(), fields[b"e"].decode(), flush=True)
"""


def latency(engine: sa.Engine, redis_url: str, sink: Sink, commits: int, backlog: int) -> None:
    """Commit start -> arrival in another process tailing the stream, per mode."""
    tracked = sessionmaker(engine, expire_on_commit=False)
    tracking = track(tracked, DEPS)
    print(
        f"\ncommit-to-visible in another process ({commits} tracked commits of one row, "
        "10 ms apart; the reader is a separate process on XREAD BLOCK)"
    )
    try:
        for backlog_rows in (0, backlog):
            for mode in ("workers' relay only", "the commit's own relay"):
                reset_outbox(engine, backlog_rows)
                own_relay = sink if mode.startswith("the commit") else None
                lags = commit_lags(engine, tracked, redis_url, sink, own_relay, commits)
                missing = commits - len(lags)
                p50 = statistics.median(lags) * 1e3
                p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3
                print(
                    f"  backlog {backlog_rows:>6,}  {mode:24s} p50 {p50:8.1f} ms  "
                    f"p99 {p99:8.1f} ms  max {lags[-1] * 1e3:8.1f} ms"
                    + (f"  ({missing} never arrived)" if missing else "")
                )
    finally:
        tracking.stop()
        outbox_rows(engine)  # the backlog's leftovers out of the trigger rows' counts


def reset_outbox(engine: sa.Engine, backlog_rows: int) -> None:
    """An empty outbox, then `backlog_rows` unrelayed rows of another table."""
    with engine.begin() as conn:
        conn.execute(invalidation_outbox.delete())
        if backlog_rows:
            conn.execute(
                invalidation_outbox.insert(),
                [{"data": '{"v":1,"table":"other"}'} for _ in range(backlog_rows)],
            )


def start_reader(redis_url: str, seconds: float) -> tuple[subprocess.Popen, dict[str, float]]:
    """A process tailing the stream, and the arrival time of each event it prints (filled
    by a thread as the lines come)."""
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, redis_url, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "ready"
    arrived: dict[str, float] = {}

    def collect(stream=reader.stdout, arrived=arrived) -> None:
        for line in stream:
            at, _, data = line.strip().partition(" ")
            arrived.setdefault(data, float(at))

    threading.Thread(target=collect, daemon=True).start()
    return reader, arrived


def commit_lags(
    engine: sa.Engine,
    tracked: sessionmaker,
    redis_url: str,
    sink: Sink,
    own_relay: Sink | None,
    commits: int,
) -> list[float]:
    """Sorted seconds from each tracked commit's start to its event's arrival in the
    reader, with the workers' relay loop running (and the commit's own if `own_relay`)."""
    reader, arrived = start_reader(redis_url, commits * 0.01 + 60)
    relay_loop = RelayLoop(Relay(engine, sink.log), interval=0.2).start()
    started: dict[str, float] = {}
    try:
        with started_runtime(own_relay):
            for i in range(1, commits + 1):
                started[f'{{"v":1,"table":"bench_items","keys":[{i}]}}'] = time.time()
                with tracked.begin() as session:
                    session.get(Item, i).name = f"lat{time.monotonic_ns()}"
                time.sleep(0.01)
        deadline = time.monotonic() + 120
        while len(arrived.keys() & started.keys()) < commits:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        relay_loop.stop()
        reader.terminate()
        reader.wait(10)
    return sorted(arrived[k] - t for k, t in started.items() if k in arrived)


def trigger_cost(engine: sa.Engine, rows: int) -> None:
    deps = dependencies(DEPS)
    statements = [
        (f"UPDATE of {rows:,} rows", "UPDATE bench_items SET name = name || 'x'"),
        ("UPDATE of 1,000 rows", "UPDATE bench_items SET name = name || 'y' WHERE id <= 1000"),
    ]
    print("\ntrigger on a statement (max_keys 10,000; best of 3, interleaved)")
    for label, sql in statements:
        times = {"off": [], "on": []}
        written = []
        for _round in range(3):
            for mode in ("off", "on"):
                if mode == "on":
                    db_triggers.install(engine, deps, 10_000)
                vacuum(engine)
                started = time.perf_counter()
                with engine.begin() as conn:
                    conn.execute(sa.text(sql))
                times[mode].append(time.perf_counter() - started)
                if mode == "on":
                    written.append(outbox_rows(engine))
                    db_triggers.remove(engine)
        off_s, on_s = min(times["off"]), min(times["on"])
        print(
            f"  {label:22s} off {off_s * 1e3:8.1f} ms   on {on_s * 1e3:8.1f} ms   "
            f"on/off = {on_s / off_s:.2f}x   outbox rows per statement {sorted(set(written))}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flushes", type=int, default=1_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds, ORM loop")
    parser.add_argument("--commits", type=int, default=300, help="latency: tracked commits")
    parser.add_argument("--backlog", type=int, default=20_000, help="latency: outbox rows")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"cachework_bench_{os.getpid()}"
    with psycopg.connect(args.pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(f"{base}/{name}")
    folder = Path(tempfile.mkdtemp(prefix="cachework-bench-redis-"))
    server = OwnRedis(folder).start()
    client = redis.Redis.from_url(server.url)
    sink = None
    try:
        print(f"tracking benchmark: PostgreSQL, Python {sys.version.split()[0]}")
        fill(engine, args.rows)
        sink = Sink(RedisLog(client))
        orm_loop(engine, args.flushes, args.rounds, sink)
        latency(engine, server.url, sink, args.commits, args.backlog)
        trigger_cost(engine, args.rows)
        return 0
    finally:
        if sink is not None:
            sink.sweeper.stop()
        client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        engine.dispose()
        with psycopg.connect(args.pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
