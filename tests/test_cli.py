"""The `cachework` command line as a user runs it: a real subprocess, real databases."""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import MODELS, assert_one_usage_line, make_env

CACHEWORK = [
    sys.executable,
    "-c",
    "from cachework.worker.cli import main; main(prog_name='cachework')",
]


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CACHEWORK, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_initdb_creates_demo_and_continuum_tables(backend, request, tmp_path: Path):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    done = run_cli(make_env(tmp_path, database_url=url), "initdb")
    assert done.returncode == 0, done.stderr
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    expected = {"projects", "categories", "products", "categories_version", "products_version"}
    assert expected | {"transaction", "transaction_meta"} <= tables
    assert "database ready" in done.stdout


def test_orm_edit_through_continuum_writes_a_version_row(database):
    from sqlalchemy_continuum import version_class

    from demo.seed import seed

    Product = MODELS.by_name()["Product"]
    ProductVersion = version_class(Product)
    with database.session() as session:
        seed(session, projects=1, products=3)
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ProductVersion)) == 0
        product = session.get(Product, 2)
        product.price = Decimal("12.34")
    with database.session() as session:
        versions = session.scalars(sa.select(ProductVersion)).all()
        assert [(v.id, v.operation_type, v.price) for v in versions] == [(2, 1, Decimal("12.34"))]
        assert versions[0].transaction_id is not None


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("initdb", "CACHEWORK_DATABASE_URL", "oracle://scott:tiger@127.0.0.1/x"),
        ("status", "CACHEWORK_BROKER_URL", "redis://127.0.0.1:1/0"),
        ("worker", "CACHEWORK_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//"),
        ("initdb", "CACHEWORK_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nothing"),
        ("worker", "CACHEWORK_DATABASE_URL", "oracle://scott:tiger@127.0.0.1/x"),
        ("worker", "CACHEWORK_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nothing"),
        ("status", "CACHEWORK_RESULT_BACKEND", "foo://scott:tiger@127.0.0.1/x"),
    ],
)
def test_bad_configuration_exits_quickly_naming_variable_and_value(
    command, variable, value, tmp_path: Path
):
    env = make_env(tmp_path)
    env[variable] = value
    started = time.monotonic()
    done = run_cli(env, command, timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert variable in done.stderr
    shown = value.replace(":tiger@", ":***@").replace(":guest@", ":***@")
    assert shown.split("//")[1].split("@")[-1].split("/")[0] in done.stderr
    assert "Traceback" not in done.stderr
    assert "tiger" not in done.stderr  # passwords never printed
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_status_reports_broker_database_workers_and_queues(
    tmp_path: Path, sqlite_url, redis_url, worker_process
):
    env = make_env(tmp_path, database_url=sqlite_url, broker_url=redis_url)
    node, _app = worker_process(env, concurrency=1)
    done = run_cli(env, "status", "--timeout", "3")
    assert done.returncode == 0, done.stderr
    assert "reachable" in done.stdout
    assert node.name in done.stdout
    for queue in ("versions", "cache", "invalidations"):
        assert f"queue {queue}" in done.stdout


# The full tables of usage errors and help run in-process (tests/unit/test_cli_usage.py);
# here one of each, as a process: what a user's shell sees from the real entry point.
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["status", "--timeout", "-1"], ["'--timeout'", "-1.0", "cachework status --help"]),
        (["--bogus"], ["No such option '--bogus'"]),
    ],
)
def test_a_usage_error_is_one_line_naming_option_and_value(args, words, tmp_path: Path):
    """click printed Usage, Try and Error lines; one `error:` line says it all, exit 2."""
    done = run_cli(make_env(tmp_path), *args, timeout=30)
    assert_one_usage_line(done.returncode, done.stdout, done.stderr, words, tmp_path)


@pytest.mark.parametrize("args", [["--help"], ["db"]])
def test_help_is_unchanged(args, tmp_path: Path):
    """--help (and a group without its command: on stderr, exit 2) still prints click's
    usage and help."""
    done = run_cli(make_env(tmp_path), *args, timeout=30)
    text = done.stdout + done.stderr
    assert text.startswith("Usage: cachework") and ("Commands:" in text or "--timeout" in text)
    assert "error:" not in text and done.returncode == (0 if "--help" in args else 2)


@pytest.mark.parametrize(
    ("command", "variable", "value", "shown"),
    [
        ("worker", "CACHEWORK_DATABASE_URL", "oracle://scott:tiger@127.0.0.1/x", "oracle://"),
        ("beat", "CACHEWORK_BROKER_URL", "kafka://127.0.0.1:9092", "kafka://127.0.0.1:9092"),
        # Valid URLs, so the worker gets as far as `worker_init` in its main process.
        ("worker", "CACHEWORK_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x", ":1/x"),
        ("worker", "CACHEWORK_MODELS", "demo.models,nosuch.models", "'nosuch.models'"),
    ],
)
def test_celery_command_with_bad_configuration_prints_one_line(
    command, variable, value, shown, tmp_path: Path
):
    env = make_env(tmp_path)
    env[variable] = value
    pool = ["-P", "solo"] if command == "worker" else []
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cachework.worker", command, *pool],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert variable in errors[0] and shown in errors[0]
    assert "Traceback" not in done.stderr and "tiger" not in done.stderr
    assert time.monotonic() - started < 15


def test_worker_command_consumes_all_queues_and_passes_options_to_celery(
    tmp_path: Path, sqlite_url, redis_url
):

    from cachework.settings import load_settings
    from cachework.worker import create_app
    from cachework.worker.spawn import stop_process_group

    env = make_env(tmp_path, database_url=sqlite_url, broker_url=redis_url)
    name = f"cli{time.monotonic_ns()}@127.0.0.1"
    app = create_app(load_settings(env))
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [*CACHEWORK, "worker", "-P", "prefork", "-c", "1", "-n", name, "--without-mingle"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not any(name in r for r in app.control.ping([name], timeout=0.5) or []):
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "worker.log"
            ).read_text(errors="replace")[-2000:]
        queues = app.control.inspect([name], timeout=3).active_queues()[name]
        # Celery's default queue too, on a broker dedicated to cachework (the default).
        assert {q["name"] for q in queues} == {"versions", "cache", "invalidations", "celery"}
        answer = app.send_task("cachework.ping").get(timeout=30, interval=0.05)
        assert answer["dialect"] == "sqlite"
    finally:
        app.close()
        stop_process_group(proc)  # no pool child outlives the test


def test_sync_cache_in_process_prints_exactly_its_lines(sqlite_url, tmp_path: Path):
    """Off a terminal the progress bar is not drawn: it left a blank first line."""
    env = make_env(tmp_path, database_url=sqlite_url)
    assert run_cli(env, "initdb").returncode == 0
    seeded = run_cli(env, "seed", "--projects", "2", "--products", "20")
    assert seeded.returncode == 0, seeded.stderr
    done = run_cli(env, "sync-cache")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["updated 4 item(s) in 2 project(s); 0 error(s)"]
    assert done.stdout == "updated 4 item(s) in 2 project(s); 0 error(s)\n"


REPLICA_NOTE = (
    "note: ordinary triggers do not fire under session_replication_role = replica (a "
    "logical-replication subscriber's apply worker, restores that set it): announce such "
    "writes yourself, or `install --always` (see README)"
)
REPLICA_WARNING = (
    "warning: new sessions of this database start with session_replication_role = replica "
    "(a server, database or role default): their writes fire no trigger"
)


# What the triggers serve: the cached table `categories`, and the demo plugin's items,
# which read `categories` whole and `products` by project (demo/plugin.py `depends_on`).
CATEGORIES = "categories -> categories, @items:categories"
PRODUCTS = "products -> @items:products.project_uuid"


def _outbox_rows_of(engine: sa.Engine, statement: str, replica: bool) -> int:
    """How many outbox rows `statement` adds, run in a transaction (in replica mode)."""
    with engine.begin() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM invalidation_outbox")).scalar()
        if replica:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(statement))
        after = conn.execute(sa.text("SELECT count(*) FROM invalidation_outbox")).scalar()
    return after - before


def test_triggers_status_says_what_replica_mode_does(pg_url, tmp_path: Path):
    """Ordinary triggers do nothing under session_replication_role = replica (restores,
    a logical-replication subscriber's apply worker): status says so, fails when new
    sessions start in that mode, and `install --always` makes them fire there too."""
    env = make_env(tmp_path, database_url=pg_url, redis_url="off")
    assert run_cli(env, "initdb").returncode == 0
    assert run_cli(env, "seed", "--projects", "1", "--products", "5").returncode == 0
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    name = engine.url.database
    note, warning = REPLICA_NOTE, REPLICA_WARNING
    rename = "UPDATE categories SET name = name || '!' WHERE id = 1"
    try:
        installed = run_cli(env, "triggers", "install")
        assert installed.returncode == 0, installed.stderr
        done = run_cli(env, "triggers", "status")
        assert (done.returncode, done.stdout.splitlines()) == (
            0,
            [CATEGORIES + ": installed", PRODUCTS + ": installed", note],
        ), done.stderr
        # One row for the cached table, one for the items that read categories whole.
        assert _outbox_rows_of(engine, rename, replica=False) == 2
        assert _outbox_rows_of(engine, rename, replica=True) == 0  # nothing announced: stale
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" SET session_replication_role = replica'))
        done = run_cli(env, "triggers", "status")
        assert (done.returncode, done.stdout.splitlines()) == (
            1,
            [CATEGORIES + ": installed", PRODUCTS + ": installed", note, warning],
        )

        installed = run_cli(env, "triggers", "install", "--always")
        assert installed.returncode == 0 and "in replica mode too" in installed.stdout
        done = run_cli(env, "triggers", "status")
        assert (done.returncode, done.stdout.splitlines()) == (
            0,
            [
                CATEGORIES + ": installed, fires in replica mode too",
                PRODUCTS + ": installed, fires in replica mode too",
            ],
        )
        assert _outbox_rows_of(engine, rename, replica=True) == 2
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE categories DISABLE TRIGGER USER"))
        done = run_cli(env, "triggers", "status")
        assert done.returncode == 1 and done.stdout.splitlines()[0] == (
            CATEGORIES + ": disabled (ALTER TABLE ... DISABLE TRIGGER): no write "
            "fires them; run `cachework triggers install`"
        )
    finally:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" RESET session_replication_role'))
        run_cli(env, "triggers", "remove")
        engine.dispose()
