"""Benchmark: the cost and the latency of data-driven rebuilds (issue 23), same run.

    .venv/bin/python bench/data_driven.py [--flushes 1000] [--rounds 7] [--writes 100]
                                          [--pg-admin URL]

A plugin that declares what its items read (`depends_on`) makes every tracked write to
those tables carry its changes through the outbox, the log and the change follower to a
rebuild. This measures what that costs the writer and how long a change takes to show:

1. Write side: the ORM loop of bench/tracking.py (`--flushes` transactions, each one flush
   of 10 rows; updates of loaded objects, then inserts) on a throwaway PostgreSQL
   database, on `bench_items` rows that belong to a `bench_projects` row, with a session
   factory untracked (`off`), tracked for a cached table only (`tables`), and tracked for
   the cached table and the item dependencies a plugin's `depends_on` produces (`items`:
   built the real way, `reads.check` against the models), `--rounds` interleaved rounds,
   each against `off` (best against best, and the median of the rounds' ratios), with
   the outbox rows each writes per transaction (one per cached or virtual table named).
2. Change-to-rebuilt latency through a real prefork worker node (a private redis-server
   for the broker, results and log; the demo's models and plugin on a second throwaway
   database): after a full sync, a tracked writer (a started runtime, as a web app runs)
   raises the price of an active product of a random project every 0.3 s, `--writes`
   times; each write counts from just before its COMMIT to the moment the project's
   `inventory/summary` item was written after that instant with data that reflects the
   write (polled every 10 ms), p50/p99/max, for the default debounce (delay 1 s, every
   5 s) and for delay 0 / every 0 (the floor: the follower's pass and the task). The
   rebuilds (changes of the items' `updated_at`) are counted against the writes.

Target: `items` at most 1.3x `off` on the loop. The worker, the redis-server and the
databases are stopped and dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tracking import insert_run, outbox_rows, update_run
from cachework.cache.invalidation import track
from cachework.cache.invalidation.dependencies import Dependency, dependencies
from cachework.cache.items import changes
from cachework.cache.items import reads as item_reads
from cachework.cache.items.projects import ProjectSource
from cachework.cache.items.store import CacheItem, get_item
from cachework.schema import cache_items, invalidation_outbox
from cachework.settings import load_settings
from cachework.worker import create_app, routing
from cachework.worker.runtime import Runtime
from cachework.worker.schema import create_tables
from cachework.worker.spawn import WorkerProcess
from tests import conftest  # bootstraps the demo's models (MODELS)
from tests.invalidation_helpers import OwnRedis

CACHED = {"bench_items": {"bench_items": "id"}}  # as bench/tracking.py: one cached table
ROWS = 100_000
PROJECTS = 100
APP = "inventory"
ITEM = "summary"
WRITE_EVERY = 0.3  # seconds between the latency part's writes
POLL = 0.01  # seconds between two reads of a pending write's item
WRITE_TIMEOUT = 30.0  # a write not rebuilt in this long counts as missed
MODES = ("off", "tables", "items")


# --- 1. the write side -------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class BenchProject(Base):
    __tablename__ = "bench_projects"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))


class BenchItem(Base):
    __tablename__ = "bench_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(20), unique=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("bench_projects.id"), index=True)


class BenchPlugin:
    """A plugin as an app declares one: a per-project item and one that reads the table."""

    app_name = "bench"
    item_names = ("summary", "all")
    depends_on = {
        "summary": [item_reads.reads("bench_items", project="project_id")],
        "all": [item_reads.reads("bench_items")],
    }


def item_dependencies() -> list[Dependency]:
    """The cached table's dependency and the plugin's item dependencies, checked against
    the models as a runtime does at start-up."""
    projects = ProjectSource(
        "bench_projects", "id", "int", model_column=BenchProject.__table__.c.id
    )
    found = item_reads.check({BenchPlugin.app_name: BenchPlugin()}, [Base.metadata], projects)
    return [*dependencies(CACHED), *found.dependencies()]


def fill(engine: sa.Engine) -> None:
    Base.metadata.create_all(engine)
    invalidation_outbox.create(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO bench_projects (id, name) SELECT g, 'project ' || g "
                "FROM generate_series(1, :n) g"
            ),
            {"n": PROJECTS},
        )
        conn.execute(
            sa.text(
                "INSERT INTO bench_items (id, code, name, project_id) "
                "SELECT g, 'C' || g, 'item ' || g, 1 + g % :p FROM generate_series(1, :n) g"
            ),
            {"n": ROWS, "p": PROJECTS},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE bench_projects, bench_items"))


def new_item(key: int) -> BenchItem:
    """A new row; each flush's 10 consecutive ids fall in 10 projects."""
    return BenchItem(id=key, code=f"N{key}", name="new", project_id=1 + key % PROJECTS)


def timed_modes(
    engine: sa.Engine, modes: dict[str, Callable[[], None]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds of each mode's run per round, interleaved (all see the same machine
    state; the order turns each round, so no mode always follows another), and the outbox
    rows each mode's last run wrote."""
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    written: dict[str, int] = {}
    names = list(modes)
    for round_ in range(rounds):
        for mode in names[round_ % len(names) :] + names[: round_ % len(names)]:
            run = modes[mode]
            started = time.perf_counter()
            run()
            times[mode].append(time.perf_counter() - started)
            written[mode] = outbox_rows(engine)
    return times, written


def report_modes(
    label: str, times: dict[str, list[float]], written: dict[str, int], flushes: int
) -> None:
    """Each mode against `off`: best against best, and the median of the rounds' ratios."""
    print(f"  {label}:")
    off_s = min(times["off"])
    for mode, mode_times in times.items():
        mode_s = min(mode_times)
        paired = statistics.median(t / o for o, t in zip(times["off"], mode_times, strict=True))
        print(
            f"    {mode:7s} {mode_s * 1e3 / flushes:6.3f} ms/transaction   "
            f"x/off = {mode_s / off_s:.2f}x (median {paired:.2f}x)   "
            f"outbox rows/transaction {written[mode] / flushes:.1f}"
        )


def write_side(pg_admin: str, flushes: int, rounds: int) -> None:
    deps = item_dependencies()
    print(
        f"\n1. ORM write-heavy loop: {flushes:,} transactions of one flush of 10 rows "
        f"({rounds} interleaved rounds; {ROWS:,} rows in {PROJECTS} projects; x/off: best "
        "against best, and the median of the rounds' ratios)\n"
        "  tables: tracked for the cached table only; items: also the plugin's item "
        f"dependencies ({', '.join(d.cached for d in deps[1:])})"
    )
    with throwaway_database(pg_admin, "dd_write") as url:
        engine = sa.create_engine(url)
        trackings = []
        try:
            fill(engine)
            factories = {m: sessionmaker(engine, expire_on_commit=False) for m in MODES}
            trackings = [
                track(factories["tables"], CACHED),
                track(factories["items"], deps),
            ]
            loop_cases(engine, factories, flushes, rounds)
        finally:
            for tracking in trackings:
                tracking.stop()
            engine.dispose()


def loop_cases(
    engine: sa.Engine, factories: dict[str, sessionmaker], flushes: int, rounds: int
) -> None:
    counter = [0]
    ids = list(range(1, flushes * 10 + 1))
    updates = {m: update_run(f, ids, flushes, counter, BenchItem) for m, f in factories.items()}
    bases = {"off": 10_000_000, "tables": 50_000_000, "items": 90_000_000}
    inserts = {m: insert_run(f, bases[m], flushes, counter, new_item) for m, f in factories.items()}
    outbox_rows(engine)
    try:
        for label, modes in (("update 10 loaded rows", updates), ("insert 10 new rows", inserts)):
            times, written = timed_modes(engine, modes, rounds)
            report_modes(label, times, written, flushes)
    finally:
        for run in updates.values():
            run.session.close()  # type: ignore[attr-defined]


# --- 2. change-to-rebuilt latency -------------------------------------------------------------


@dataclass
class Write:
    """One measured write: its project, when it committed (wall clock, and the monotonic
    clock for the latency), and the item data that shows it (its own state, or a later
    write's to the same project)."""

    project: str
    wall: float
    started: float
    shows: list[dict] = field(default_factory=list)


@dataclass
class Outcome:
    lags: list[float] = field(default_factory=list)
    missed: int = 0
    rebuilds: int = 0
    writes: int = 0
    projects_written: int = 0
    left_pending: int = 0


class Writer:
    """A web app's writer: a tracked session factory on a started runtime, raising the
    price of one active product of a random project per write."""

    def __init__(self, runtime: Runtime, engine: sa.Engine, seed: int) -> None:
        from demo.models import Product

        self.product = Product
        self.factory = sessionmaker(engine)
        self.tracking = track(self.factory, runtime)
        self.rng = random.Random(seed)
        with self.factory() as session:
            rows = session.execute(
                sa.select(Product.project_uuid, Product.id).where(Product.active.is_(True))
            ).all()
        self.products: dict[str, list[int]] = {}
        for project, product_id in rows:
            self.products.setdefault(str(project), []).append(product_id)

    def write(self, reader: Session) -> Write:
        """One tracked commit; its `shows`: the summary the project has right after it."""
        from demo.plugin import summary

        project = self.rng.choice(sorted(self.products))
        product_id = self.rng.choice(self.products[project])
        with self.factory() as session:
            product = session.get(self.product, product_id)
            product.price = product.price + Decimal("1.00")  # totals only grow: each distinct
            wall, started = time.time(), time.perf_counter()
            session.commit()
        reader.rollback()  # a fresh snapshot, after the commit
        return Write(project, wall, started, [summary(reader, project)])

    def stop(self) -> None:
        self.tracking.stop()


def shown(item: CacheItem | None, write: Write) -> bool:
    """Whether the write's project's item was written after the commit's start and reads
    the write's state (or a later write's to the same project)."""
    return (
        item is not None and item.updated_at.timestamp() > write.wall and item.data in write.shows
    )


def read_item(reader: Session, project: str) -> CacheItem | None:
    reader.rollback()  # a fresh snapshot
    return get_item(reader, APP, ITEM, project)


class RebuildCounter:
    """Counts changes of the `updated_at` of every project's summary (one query a poll)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.last = self._read()
        self.count = 0

    def _read(self) -> dict[str, object]:
        c = cache_items.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.project, c.updated_at).where(c.app_name == APP, c.name == ITEM)
            )
            return {project: updated for project, updated in rows}

    def poll(self) -> None:
        now = self._read()
        self.count += sum(1 for p, t in now.items() if self.last.get(p) != t)
        self.last = now


def measure_writes(writer: Writer, engine: sa.Engine, writes: int) -> Outcome:
    """`writes` writes every WRITE_EVERY s; each one's lag to its rebuilt item (module
    docstring), its pending writes' items polled every POLL s; bounded in time."""
    outcome = Outcome(writes=writes)
    counter = RebuildCounter(engine)
    pending: list[Write] = []
    done = 0
    next_write = time.perf_counter()
    deadline = next_write + writes * WRITE_EVERY + WRITE_TIMEOUT + 10
    projects: set[str] = set()
    with Session(engine) as reader:
        while (done < writes or pending) and time.perf_counter() < deadline:
            if done < writes and time.perf_counter() >= next_write:
                write = writer.write(reader)
                for earlier in pending:
                    if earlier.project == write.project:
                        earlier.shows.extend(write.shows)
                pending.append(write)
                projects.add(write.project)
                done += 1
                next_write += WRITE_EVERY
            pending = check_pending(reader, pending, outcome)
            counter.poll()
            time.sleep(POLL)
    outcome.missed += len(pending) + (writes - done)
    outcome.left_pending = drain(engine, counter)
    outcome.rebuilds = counter.count
    outcome.projects_written = len(projects)
    outcome.lags.sort()
    return outcome


def check_pending(reader: Session, pending: list[Write], outcome: Outcome) -> list[Write]:
    """The writes still waiting (each project's item read once); those shown get their
    lag, those over WRITE_TIMEOUT are missed."""
    items = {p: read_item(reader, p) for p in {w.project for w in pending}}
    now = time.perf_counter()
    waiting = []
    for write in pending:
        if shown(items[write.project], write):
            outcome.lags.append(now - write.started)
        elif now - write.started > WRITE_TIMEOUT:
            outcome.missed += 1
        else:
            waiting.append(write)
    return waiting


def drain(engine: sa.Engine, counter: RebuildCounter, timeout: float = 20.0) -> int:
    """Wait until no rebuild is pending (the debounce's last ones), counting rebuilds;
    the scopes still pending after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            left = len(changes.pending(conn))
        counter.poll()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # a task sent just now finishes
    counter.poll()
    return left


def warm_up(writer: Writer, engine: sa.Engine, every: float) -> float:
    """One write, waited for (the follower is following and the worker rebuilding), then
    `every` seconds so that no measured write waits on its debounce."""
    with Session(engine) as reader:
        write = writer.write(reader)
        deadline = time.monotonic() + 60
        while not shown(read_item(reader, write.project), write):
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up write was not rebuilt within 60 s")
            time.sleep(POLL)
        lag = time.perf_counter() - write.started
    time.sleep(every + 0.5)
    return lag


def latency_env(folder: Path, database_url: str, redis_url: str, delay: str, every: str) -> dict:
    base = redis_url.rsplit("/", 1)[0]
    return conftest.make_env(
        folder,
        database_url=database_url,
        broker_url=f"{base}/1",
        result_backend=f"{base}/2",
        redis_url=f"{base}/0",
        rebuild_delay=delay,
        rebuild_every=every,
        log_level="WARNING",
    )


def run_setting(env: dict[str, str], folder: Path, writes: int) -> tuple[Outcome, float]:
    """A worker node for `env`, a full sync, the warm-up and the measured writes."""
    settings = load_settings(env)
    app = create_app(settings)
    node = WorkerProcess(env, concurrency=2, logfile=folder / "worker.log").start()
    runtime = writer = None
    engine = sa.create_engine(settings.database_url)
    try:
        node.wait_ready(app, timeout=90)
        result = app.send_task(routing.SYNC_CACHE, kwargs={"app_name": APP}).get(timeout=120)
        assert not result["errors"], result
        runtime = Runtime(settings).start()
        writer = Writer(runtime, engine, seed=23)  # the same projects in every setting
        warm = warm_up(writer, engine, settings.rebuild_every)
        return measure_writes(writer, engine, writes), warm
    except Exception:
        print_log_tail(folder / "worker.log")
        raise
    finally:
        if writer is not None:
            writer.stop()
        if runtime is not None:
            runtime.close()
        node.stop()
        app.close()
        engine.dispose()


def print_log_tail(path: Path, lines: int = 30) -> None:
    """The worker's last log lines (its folder goes at the end), for a failed setting."""
    if path.exists():
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"  worker log ({path.name}), last {len(tail)} lines:", *tail, sep="\n    ")


def report_latency(label: str, outcome: Outcome, warm: float) -> None:
    lags = outcome.lags
    if lags:
        p50 = statistics.median(lags) * 1e3
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3
        figures = f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {lags[-1] * 1e3:7.1f} ms"
    else:
        figures = "no write was rebuilt"
    print(
        f"  {label:28s} {figures}  (warm-up {warm * 1e3:.0f} ms)\n"
        f"    {outcome.writes} writes to {outcome.projects_written} projects: "
        f"{len(lags)} rebuilt, {outcome.missed} missed (> {WRITE_TIMEOUT:.0f} s); "
        f"{outcome.rebuilds} rebuilds of the summaries "
        f"({outcome.rebuilds / max(outcome.writes, 1):.2f} per write); "
        f"scopes left pending {outcome.left_pending}"
    )


def latency(pg_admin: str, writes: int, folder: Path) -> None:
    from demo.seed import seed

    print(
        f"\n2. change-to-rebuilt latency, a real prefork worker node (2 children): {writes} "
        f"tracked price writes {WRITE_EVERY} s apart, each to a random project of 20 (one "
        f"with active products); from just before the COMMIT to the item {APP}/{ITEM} "
        f"written after it with the write's data (polled every {POLL * 1e3:.0f} ms)"
    )
    server = OwnRedis(folder / "redis").start()
    try:
        with throwaway_database(pg_admin, "dd_latency") as url:
            engine = sa.create_engine(url)
            try:
                create_tables(engine, conftest.MODELS)
                with Session(engine) as session, session.begin():
                    seed(session, projects=20, products=400)
            finally:
                engine.dispose()
            for label, delay, every in (
                ("defaults (delay 1, every 5)", "1", "5"),
                ("floor (delay 0, every 0)", "0", "0"),
            ):
                env = latency_env(folder / f"d{delay}e{every}", url, server.url, delay, every)
                outcome, warm = run_setting(env, folder / f"d{delay}e{every}", writes)
                report_latency(label, outcome, warm)
    finally:
        server.stop()


# --- databases ----------------------------------------------------------------------------------


@contextmanager
def throwaway_database(pg_admin: str, kind: str) -> Iterator[str]:
    """A PostgreSQL database of this run's own (its SQLAlchemy URL), dropped at the end."""
    name = f"cachework_bench_{kind}_{os.getpid()}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flushes", type=int, default=1_000, help="transactions per run")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds, ORM loop")
    parser.add_argument("--writes", type=int, default=100, help="latency: writes per setting")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cachework-bench-data-driven-"))
    started = time.monotonic()
    try:
        print(f"data-driven rebuilds benchmark: PostgreSQL, Python {sys.version.split()[0]}")
        write_side(args.pg_admin, args.flushes, args.rounds)
        latency(args.pg_admin, args.writes, folder)
        print(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(conftest._RUN_DIR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
