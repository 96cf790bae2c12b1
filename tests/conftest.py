"""Shared fixtures: real services, per-run isolation, real workers, leak checks.

Services (PostgreSQL, Redis, RabbitMQ on 127.0.0.1) are used over real connections. Each
test run gets its own PostgreSQL database (created and dropped), its own `redis-server`
(started on a free loopback port, stopped at the end: the tests never flush a Redis they
did not start) and its own RabbitMQ vhost. A missing service skips its tests on a laptop
but fails them when CACHEWORK_REQUIRE_SERVICES=1 (set by .ci/run). The run's temporary
folder (`cachework-tests-*`) is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Before anything reads settings: keep the embedded default's files out of the checkout.
_RUN_DIR = Path(tempfile.mkdtemp(prefix="cachework-tests-"))
os.environ["CACHEWORK_DATA_DIR"] = str(_RUN_DIR / "default")
for _name in list(os.environ):
    if (
        _name.startswith("CACHEWORK_")
        and _name
        not in (
            "CACHEWORK_DATA_DIR",
            "CACHEWORK_REQUIRE_SERVICES",
        )
        and not _name.startswith("CACHEWORK_TEST_")
    ):
        del os.environ[_name]

from cachework import database as db  # noqa: E402
from cachework.importers.bootstrap import bootstrap  # noqa: E402
from cachework.settings import Settings, load_settings  # noqa: E402

REQUIRE_SERVICES = os.environ.get("CACHEWORK_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get(
    "CACHEWORK_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# A Redis the tests may flush (default: a redis-server of this run's own).
REDIS_OVERRIDE = os.environ.get("CACHEWORK_TEST_REDIS")
AMQP_HOST = os.environ.get("CACHEWORK_TEST_AMQP", "127.0.0.1:5672")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"

MODELS = bootstrap(("demo.models",))


def unavailable(service: str, why: object) -> None:
    """Skip on a laptop without `service`; fail in CI (CACHEWORK_REQUIRE_SERVICES=1)."""
    message = f"{service} is not available: {why}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (CACHEWORK_REQUIRE_SERVICES=1 makes this a failure)")
    pytest.skip(message)


@contextmanager
def started(server, service: str) -> Iterator:
    """`server` started (its `start()`), stopped at the end (its `stop()`, after a failed
    start too); a server that cannot start is `unavailable(service, ...)`."""
    try:
        server.start()
    except Exception as exc:
        server.stop()
        unavailable(service, exc)
    try:
        yield server
    finally:
        server.stop()


# --- PostgreSQL ---------------------------------------------------------------------------


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A database of its own for this test run, dropped at the end (SQLAlchemy URL)."""
    name = f"cachework_test_{RUN_ID}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    """The run's PostgreSQL database with an empty public schema."""
    empty_schema(pg_server_url)
    return pg_server_url


def empty_schema(url: str) -> None:
    """Empty the public schema of the run's database (also for module-scoped fixtures,
    which cannot take `pg_url`)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Runs a test once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def database(any_db_url: str) -> Iterator[db.Database]:
    """This process's Database on a fresh SQLite or PostgreSQL, with all tables created."""
    yield from _database(any_db_url)


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[db.Database]:
    yield from _database(pg_url)


def _database(url: str) -> Iterator[db.Database]:
    from cachework.worker.schema import create_tables

    database = db.Database(url)
    create_tables(database.engine, MODELS)
    try:
        yield database
    finally:
        leaked_sessions, leaked_connections = database.open_sessions, database.checked_out()
        database.dispose()
    assert leaked_sessions == 0, f"{leaked_sessions} session(s) left open"
    assert leaked_connections == 0, f"{leaked_connections} connection(s) left checked out"


@pytest.fixture
def runtime(database: db.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A runtime on the `database` fixture (invalidation log and locks in that database);
    the environment says the same, so CLI commands run in-process see it too."""
    from cachework.worker.runtime import Runtime

    env = make_env(tmp_path, database_url=database.url, redis_url="off")
    for name, value in env.items():
        if name.startswith("CACHEWORK_"):
            monkeypatch.setenv(name, value)
    runtime = Runtime(settings_of(env), database=database)
    yield runtime
    runtime.stop()


# --- Redis ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A redis-server of this run's own on a free loopback port (no persistence), stopped
    at the end; or CACHEWORK_TEST_REDIS, a Redis given to the tests to flush."""
    if REDIS_OVERRIDE:
        yield REDIS_OVERRIDE
        return
    from tests.invalidation_helpers import OwnRedis

    with started(OwnRedis(_RUN_DIR / "redis"), "Redis (redis-server)") as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


# --- RabbitMQ ---------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own, deleted at the end."""
    from kombu import Connection

    vhost = f"cachework-test-{RUN_ID}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        unavailable("RabbitMQ", exc)
    yield url
    _rabbitmqctl("delete_vhost", vhost)


# --- Settings and workers -----------------------------------------------------------------


def make_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """A worker environment: the test's CACHEWORK_* values, loopback only, schedules off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    env.update(
        CACHEWORK_DATA_DIR=str(tmp_path / "cachework"),
        CACHEWORK_IMPORT_SCHEDULE="off",
        CACHEWORK_SYNC_SCHEDULE="off",
    )
    env.update({f"CACHEWORK_{k.upper()}": v for k, v in values.items()})
    return env


def assert_one_usage_line(
    code: int, stdout: str, stderr: str, words: list[str], folder: Path
) -> None:
    """A CLI usage error as cachework prints it: exit status 2, nothing on stdout, one
    `error:` line on stderr naming each of `words`, and no data folder made."""
    assert code == 2, (stdout, stderr)
    assert stdout == "" and len(stderr.splitlines()) == 1, stderr
    line = stderr.strip()
    assert line.startswith("error: ") and "Usage" not in line
    for word in words:
        assert word in line, line
    assert not (folder / "cachework").exists() or not any((folder / "cachework").iterdir())


def settings_of(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start REAL prefork workers (`celery -A cachework.worker worker -P prefork`); all are stopped
    and reaped at teardown. Call with an env (see `make_env`); returns (worker, app)."""
    from cachework.worker import create_app
    from cachework.worker.spawn import WorkerProcess

    started: list[tuple[WorkerProcess, object]] = []

    def start(
        env: dict[str, str],
        concurrency: int = 2,
        name: str | None = None,
        timeout=90,
        pool: str = "prefork",
    ):
        app = create_app(load_settings(env))
        node = WorkerProcess(
            env,
            concurrency=concurrency,
            name=name,
            logfile=tmp_path / f"worker-{len(started)}.log",
            pool=pool,
        ).start()
        started.append((node, app))
        node.wait_ready(app, timeout=timeout)
        return node, app

    yield start
    for node, app in started:
        node.stop()
        app.close()


@pytest.fixture
def inprocess_worker() -> Iterator[Callable[..., object]]:
    """An in-process worker (celery.contrib.testing.worker.start_worker) for an app."""
    from contextlib import ExitStack

    from celery.contrib.testing.worker import start_worker

    with ExitStack() as stack:

        def start(app, **kwargs):
            kwargs.setdefault("pool", "solo")
            kwargs.setdefault("perform_ping_check", False)
            kwargs.setdefault("shutdown_timeout", 20)
            return stack.enter_context(start_worker(app, **kwargs))

        yield start


@pytest.fixture(scope="session", autouse=True)
def _remove_run_dir() -> Iterator[None]:
    """The run's temporary folder (the embedded default's files, Redis's folder) goes at
    the end of the run."""
    yield
    shutil.rmtree(_RUN_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The fault suite's table (`make faults`), written to .cachework/faults-report.md."""
    from tests.fault_helpers import write_report

    text = write_report(config)
    if text:
        terminalreporter.write_line("")
        for line in text.splitlines():
            terminalreporter.write_line(line)


# --- Leak checks ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leaked_sessions() -> Iterator[None]:
    """Every Database of this process (fixtures' and tests' own) has no session open and
    no connection checked out when a test ends. Torn down after `no_leaked_threads`."""
    yield
    leaks = [
        f"{d.engine.url.render_as_string(hide_password=True)}: "
        f"{d.open_sessions} session(s), {d.checked_out()} connection(s)"
        for d in db.live_databases()
        if d.open_sessions or d.checked_out()
    ]
    assert not leaks, f"database sessions or connections leaked: {leaks}"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Threads a test starts must be gone (or finishing) when it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"threads leaked: {[t.name for t in extra]}"
