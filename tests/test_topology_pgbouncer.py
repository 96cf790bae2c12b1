"""Every part of cachework through PgBouncer in transaction pooling mode (issue 19, item 1).

A private pgbouncer (tests/pgbouncer_helpers.py) with 3 server connections shared by every
client, in front of the run's database; cachework configured with
CACHEWORK_DATABASE_POOLER=transaction. Shown: what breaks without the setting (psycopg's
prepared statements), the CLI (initdb, migrations, seed, import, cache sync), two imports
at once (one refused, the next one runs), the database lock backend (Redis off) and a real
prefork worker serving lookups while tracked writes invalidate them (0 errors, 0 stale).
"""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework import database as db
from cachework.cache import jobs
from cachework.cache.invalidation import track
from cachework.cache.items import store
from cachework.cache.items.locks import DatabaseLocks, scope_key
from cachework.cache.items.sync import rebuild_scope
from cachework.errors import LockedError
from cachework.importers.versions import import_versions
from cachework.worker.runtime import Runtime
from cachework.worker.schema import create_tables
from demo.seed import project_uuid, seed
from tests.conftest import MODELS, make_env, settings_of, unavailable
from tests.invalidation_helpers import wait_until
from tests.pgbouncer_helpers import OwnPgBouncer, binary
from tests.project_cache_helpers import price_total

pytestmark = pytest.mark.topology

CACHEWORK = [
    sys.executable,
    "-c",
    "from cachework.worker.cli import main; main(prog_name='cachework')",
]
Category = MODELS.by_name()["Category"]
NAME = re.compile(r"^cat(\d+)-v(\d+)$")
CATEGORIES = range(1, 9)


@pytest.fixture
def bouncer(pg_url) -> Iterator[OwnPgBouncer]:
    """PgBouncer in transaction mode with 3 server connections, in front of an empty
    database of the run's PostgreSQL."""
    if binary() is None:
        unavailable("PgBouncer", "no pgbouncer executable (apt-get install pgbouncer)")
    server = OwnPgBouncer(pg_url, pool_mode="transaction", pool_size=3)
    try:
        server.start()
    except Exception as exc:
        server.destroy()
        unavailable("PgBouncer", exc)
    try:
        yield server
    finally:
        server.destroy()


def _advisory_locks(direct_url: str) -> int:
    """Advisory locks held on the real server (seen past the bouncer)."""
    engine = sa.create_engine(direct_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).scalar_one()
    finally:
        engine.dispose()


def _statements(database: db.Database, rounds: int = 3) -> list[str]:
    """Two clients take turns, each running one statement 8 times a turn (each in its own
    transaction, so each may land on any server connection); the errors, one line each."""
    errors: list[str] = []
    with database.engine.connect() as a, database.engine.connect() as b:
        for _round, conn in itertools.product(range(rounds), (a, b)):
            for i in range(8):
                try:
                    conn.execute(sa.text("SELECT :i + 1"), {"i": i}).scalar_one()
                    conn.commit()
                except sa.exc.DBAPIError as exc:
                    errors.append(str(exc.orig).splitlines()[0])
                    conn.rollback()
    return errors


def test_prepared_statements_break_through_transaction_pooling_unless_the_setting_is_on(
    bouncer, caplog
):
    plain = db.Database(bouncer.url)  # what a new user had: psycopg prepares after 5 runs
    try:
        with caplog.at_level(logging.ERROR, logger="cachework.pooler"):
            errors = _statements(plain)
    finally:
        plain.dispose()
    assert errors and all("prepared statement" in e for e in errors), errors
    hints = [r.getMessage() for r in caplog.records if r.name == "cachework.pooler"]
    assert len(hints) == 1 and "set CACHEWORK_DATABASE_POOLER=transaction" in hints[0], hints
    caplog.clear()
    for database in (
        db.Database(bouncer.url, "transaction"),
        db.Database(bouncer.url + "?prepare_threshold=none"),  # was a TypeError
    ):
        try:
            assert _statements(database) == []
        finally:
            database.dispose()
    assert not [r for r in caplog.records if r.name == "cachework.pooler"]


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*CACHEWORK, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


def test_the_cli_migrates_seeds_imports_and_syncs_through_pgbouncer(bouncer, tmp_path):
    env = make_env(
        tmp_path, database_url=bouncer.url, database_pooler="transaction", redis_url="off"
    )
    assert "database ready" in _cli(env, "initdb")
    _cli(env, "db", "upgrade")  # at head already: a no-op that still reads the revision
    _cli(env, "seed", "--projects", "2", "--products", "40")
    for _ in range(3):  # each import finds the lock free: none is left behind
        _cli(env, "import-versions", "--comment", "through pgbouncer")
    _cli(env, "sync-cache")  # the project cache, under the database lock (Redis off)
    engine = sa.create_engine(bouncer.url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT count(*) FROM products_version")).scalar()
            items = conn.execute(sa.text("SELECT count(*) FROM cache_items")).scalar()
            transactions = conn.execute(sa.text("SELECT count(*) FROM transaction")).scalar()
    finally:
        engine.dispose()
    assert versions == 40 and transactions == 1  # the first import wrote; the others: nothing
    assert items > 0
    assert _advisory_locks(bouncer.server.render_as_string(hide_password=False)) == 0


@contextmanager
def _traffic(database: db.Database, clients: int = 2) -> Iterator[list[int]]:
    """Other clients' short transactions meanwhile (bounded), as a worker's would be: the
    bouncer then hands server connections round, as in production."""
    stop = threading.Event()
    done: list[int] = []

    def client() -> None:
        count = 0
        while not stop.is_set() and count < 20_000:
            with database.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_sleep(0.002)"))
                conn.commit()
            count += 1
        done.append(count)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield done
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def _import_while_another_runs(database: db.Database, direct: str) -> None:
    """A first import holds the lock (stopped at its 'done' stage) while a second one is
    tried: refused; the lock goes with the first one's transaction."""
    inside, go_on = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold(event: dict) -> None:
        if event["stage"] == "done" and not inside.is_set():
            inside.set()  # the first import holds the lock, its work done
            go_on.wait(20)

    def first() -> None:
        try:
            with database.session() as session:
                outcome["first"] = import_versions(session, MODELS.versioned, progress=hold)
        except Exception as exc:  # reported below
            outcome["first"] = exc
            inside.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(20), "the first import never got going"
        assert "first" not in outcome, f"the first import failed: {outcome['first']!r}"
        assert _advisory_locks(direct) == 1
        with (
            pytest.raises(LockedError, match="another version import is running"),
            database.session() as session,
        ):
            import_versions(session, MODELS.versioned)
    finally:
        go_on.set()
        thread.join(30)
    assert not isinstance(outcome.get("first"), Exception), outcome
    assert outcome["first"].transaction_id is not None
    assert _advisory_locks(direct) == 0  # released with its transaction


def test_two_imports_at_once_one_is_refused_and_the_next_one_runs(bouncer):
    """The issue: the session-level lock stayed on a pooled server connection, so the next
    client given that connection also 'held' it (two imports at once) and the unlock ran
    on another connection (a false 'another version import is running' afterwards)."""
    direct = bouncer.server.render_as_string(hide_password=False)
    database = db.Database(bouncer.url, "transaction")
    try:
        create_tables(database.engine, MODELS)
        with database.session() as session:
            seed(session, projects=1, products=20)
        for round_ in range(4):
            with database.session() as session:
                session.execute(sa.text("UPDATE products SET price = price + 1 WHERE id <= 3"))
            with _traffic(database) as done:
                _import_while_another_runs(database, direct)
                with database.session() as session:  # no false "running" afterwards
                    again = import_versions(session, MODELS.versioned)
            assert sum(done) > 0
            # ... and it saw everything the first one committed
            assert again.transaction_id is None, (round_, again)
            assert all(c.changes == 0 for c in again.models.values()), (round_, again)
    finally:
        database.dispose()


def test_project_cache_rebuilds_with_the_database_lock_through_pgbouncer(bouncer, tmp_path):
    env = make_env(
        tmp_path, database_url=bouncer.url, database_pooler="transaction", redis_url="off"
    )
    runtime = Runtime(settings_of(env))
    database = runtime.database
    try:
        assert isinstance(runtime.locks, DatabaseLocks)
        create_tables(database.engine, MODELS)
        with database.session() as session:
            seed(session, projects=2, products=40)
        result = jobs.rebuild_items(runtime, None, None, None)
        assert result["errors"] == [] and result["updated"] > 0, result
        project = project_uuid(0)
        locks = DatabaseLocks(database.engine, ttl_ms=5_000)
        intervals: list[tuple[float, float]] = []

        class Slow:
            app_name = "slow"

            def update_cache(self, store_, session, project=None, name=None):
                start = time.monotonic()
                time.sleep(0.03)
                store_.set_item("total", price_total(session, project))
                time.sleep(0.03)
                intervals.append((start, time.monotonic()))

        results: list = []

        def request_rebuild() -> None:
            with database.session() as session:
                session.execute(
                    sa.text("UPDATE products SET price = price + 1 WHERE project_uuid = :p"),
                    {"p": project},
                )
            results.append(rebuild_scope(database.session, locks, Slow(), project))

        threads = [threading.Thread(target=request_rebuild) for _ in range(6)]
        for thread in threads:
            thread.start()
            time.sleep(0.01)
        for thread in threads:
            thread.join(30)
        assert len(results) == 6 and all(not r.errors for r in results), results
        ordered = sorted(intervals)
        for (_s1, end), (start, _e2) in itertools.pairwise(ordered):
            assert start >= end, f"rebuilds overlapped: {ordered}"
        with database.session() as session:
            assert store.get_item(session, "slow", "total", project=project).data == (
                price_total(session, project)
            )
        assert not locks.lock(scope_key(project, "slow")).is_dirty()
    finally:
        runtime.close()


def _seed_version_zero(url: str) -> None:
    """The tables, seeded through the bouncer; every category named `cat<id>-v0`."""
    database = db.Database(url, "transaction")
    create_tables(database.engine, MODELS)
    with database.session() as session:
        seed(session, projects=1, products=5)
        session.execute(sa.text("UPDATE categories SET name = 'cat' || id || '-v0'"))
    database.dispose()


class _Lookups:
    """Lookups of category names in flight, each with the last version committed before
    it was sent (its floor); an answer older than its floor is stale."""

    def __init__(self, app) -> None:
        self.app = app
        self.pending: list[tuple[int, int, object]] = []
        self.stale: list[str] = []
        self.failed: list[str] = []
        self.reads = 0

    def send(self, key: int, floor: int) -> None:
        sent = self.app.send_task("cachework.lookup", kwargs={"table": "categories", "key": key})
        self.pending.append((key, floor, sent))
        if len(self.pending) >= 6:
            self.collect()

    def collect(self) -> None:
        for key, floor, sent in self.pending:
            try:
                record = sent.get(timeout=30, interval=0.01)
            except Exception as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
                continue
            version = int(NAME.match(record["name"]).group(2))
            self.reads += 1
            if version < floor:
                self.stale.append(f"category {key}: read v{version} after v{floor} was committed")
        self.pending.clear()


def _assert_outbox_drained(engine: sa.Engine) -> None:
    """The web process's outbox relay empties the outbox within 10 s."""
    with engine.connect() as conn:
        left = wait_until(
            lambda: conn.execute(sa.text("SELECT count(*) FROM invalidation_outbox")).scalar() == 0,
            timeout=10,
        )
        assert left


@pytest.mark.parametrize("log", ["redis", "database"])
def test_a_worker_serves_lookups_while_tracked_writes_invalidate_them(
    bouncer, redis_url, worker_process, tmp_path, log
):
    """Lookups through a real prefork worker (its tables refreshed, its Celery results
    stored, its outbox relayed, all through the bouncer) while a web process's tracked
    sessions rename categories: every lookup answers, none reads a name older than the
    last commit before it was sent. The invalidation log is a Redis stream, or the
    database's own table (CACHEWORK_REDIS_URL=off: polled, appended under a
    transaction-level advisory lock, also through the bouncer)."""
    _seed_version_zero(bouncer.url)
    env = make_env(
        tmp_path,
        database_url=bouncer.url,
        database_pooler="transaction",
        broker_url=redis_url,
        redis_url=redis_url if log == "redis" else "off",
        listener_stale_after="2",
    )  # results in the database (Celery's SQLAlchemy backend), through the bouncer too
    _node, app = worker_process(env, concurrency=2)
    web = Runtime(settings_of(env)).start()
    Session = sessionmaker(db.make_engine(bouncer.url, "transaction"))
    tracking = track(Session, web)
    latest = dict.fromkeys(CATEGORIES, 0)
    lookups = _Lookups(app)
    writes = 0
    try:
        deadline = time.monotonic() + 40
        for step in range(480):
            if time.monotonic() > deadline:
                break
            key = CATEGORIES[step * 5 % len(CATEGORIES)]
            if step % 3 == 0:
                writes += 1
                with Session.begin() as session:  # the app's ORM write, tracked
                    session.get(Category, key).name = f"cat{key}-v{writes}"
                latest[key] = writes
            else:
                lookups.send(key, latest[key])
        lookups.collect()
        _assert_outbox_drained(web.database.engine)
    finally:
        tracking.stop()
        web.close()
        Session.kw["bind"].dispose()
    failed, stale, reads = lookups.failed, lookups.stale, lookups.reads
    assert failed == [], failed[:5]
    assert stale == [], stale[:5]
    assert reads >= 150 and writes >= 60, (reads, writes)
    log = (tmp_path / "worker-0.log").read_text(errors="replace")
    for trouble in ("prepared statement", "outbox relay failed", "outbox failed", "Traceback"):
        assert trouble not in log, trouble
