"""`cachework.import_versions` through a real prefork worker, the task's progress, its
retries, and the CLI (in-process and `--enqueue`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cachework import database as db
from cachework.errors import LockedError, ValidationError
from cachework.importers.locking import LOCK_KEY
from cachework.worker.cli import main
from cachework.worker.schema import create_tables
from demo.seed import seed
from tests.conftest import MODELS, make_env, settings_of
from tests.import_helpers import transactions

CACHEWORK = [sys.executable, "-c", "from cachework.worker.cli import main; main()"]


def test_task_through_a_real_worker(tmp_path, pg_database, redis_url, worker_process):
    with pg_database.session() as session:
        seed(session, projects=2, products=40)
    env = make_env(tmp_path, database_url=pg_database.url, broker_url=redis_url)
    _node, app = worker_process(env, concurrency=1)

    def call(**kwargs):
        return app.send_task("cachework.import_versions", kwargs=kwargs)

    bad = {
        "unknown model": ({"models": ["Nope"]}, "NotFoundError", "unknown versioned model 'Nope'"),
        "negative limit": ({"max_changes": -3}, "ValidationError", "max_changes=-3"),
        "wrong type": ({"dry_run": "yes"}, "ValidationError", "dry_run='yes'"),
        "models not a list": ({"models": "Product"}, "ValidationError", "models='Product'"),
    }
    for name, (kwargs, error, text) in bad.items():
        result = call(**kwargs)
        exc = result.get(timeout=60, interval=0.05, propagate=False)
        assert result.status == "FAILURE", name
        assert type(exc).__name__ == error and text in str(exc), (name, exc)
    with pg_database.session() as session:
        assert transactions(session) == 0  # bad input wrote nothing

    first = call(user="web", remote_addr="192.0.2.1", comment="first").get(timeout=60)
    assert set(first) >= {"transaction_id", "dry_run", "models", "warnings"}
    assert isinstance(first["transaction_id"], int) and first["dry_run"] is False
    assert first["models"]["Product"] == {
        "created": 40, "updated": 0, "deleted": 0, "unchanged": 0, "skipped": 0, "repaired": 0,
    }  # fmt: skip
    assert first["models"]["Category"]["created"] == 8 and first["warnings"] == []
    with pg_database.session() as session:
        session.execute(sa.text("UPDATE products SET price = price * 2 WHERE id <= 4"))
    dry = call(models=["Product"], dry_run=True).get(timeout=60)
    assert dry["transaction_id"] is None and dry["models"]["Product"]["updated"] == 4
    second = call(models=["Product"], max_changes=4).get(timeout=60)
    assert second["transaction_id"] == first["transaction_id"] + 1
    assert second["models"] == dry["models"]
    with pg_database.session() as session:
        meta = dict(
            session.execute(
                sa.text("SELECT key, value FROM transaction_meta WHERE transaction_id = :t"),
                {"t": first["transaction_id"]},
            ).all()
        )
        assert meta == {"user": "web", "comment": "first"}


@pytest.fixture
def pg_app(pg_database, tmp_path):
    """A worker app whose runtime uses the `pg_database` fixture (tasks run in-process)."""
    from cachework.worker import create_app
    from cachework.worker.runtime import Runtime

    settings = settings_of(make_env(tmp_path, database_url=pg_database.url, redis_url="off"))
    app = create_app(settings)
    app.runtime = Runtime(settings, database=pg_database)
    app.loader.import_default_modules()  # the task modules, as a worker imports them
    yield app
    app.runtime.stop()
    app.close()


def test_task_reports_progress_through_its_state(pg_database, pg_app, monkeypatch):
    task = pg_app.tasks["cachework.import_versions"]
    with pg_database.session() as session:
        seed(session, projects=1, products=5)
    states = []
    monkeypatch.setattr(task, "update_state", lambda **kw: states.append(kw))
    task.push_request(id="progress-test")
    try:
        result = task.run(models=["Product"])
    finally:
        task.pop_request()
    assert result["models"]["Product"]["created"] == 5
    assert {s["state"] for s in states} == {"PROGRESS"}
    assert [(s["meta"].get("model"), s["meta"]["stage"]) for s in states] == [
        (None, "planned"), ("Product", "checking"), ("Product", "done"),
    ]  # fmt: skip
    assert states[-1]["meta"]["created"] == 5
    # each state is the whole run so far: rows checked of rows to check, per model
    assert states[0]["meta"]["models"] == {"Product": {"stage": "waiting", "done": 0, "rows": 5}}
    last = states[-1]["meta"]
    assert last["models"]["Product"]["done"] == last["rows"] == 5 and last["percent"] == 100.0


def test_cli_runs_in_process_and_rejects_bad_names(database, runtime):  # runtime: the env
    with database.session() as session:
        seed(session, projects=1, products=12)
    runner = CliRunner()
    dry = runner.invoke(main, ["import-versions", "--dry-run", "--model", "Product"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing written" in dry.output and "12" in dry.output
    real = runner.invoke(main, ["import-versions", "--user", "cli", "--comment", "c"])
    assert real.exit_code == 0, real.output
    assert "transaction 1" in real.output
    again = runner.invoke(main, ["import-versions", "--no-delete", "--max-changes", "0"])
    assert again.exit_code == 0 and "nothing written" in again.output
    wrong = runner.invoke(main, ["import-versions", "--model", "Nope"])
    assert wrong.exit_code == 2
    assert "unknown versioned model 'Nope'; valid names: Category, Product" in wrong.output


@pytest.mark.parametrize("limit", ["-1", "ten"])
def test_cli_checks_max_changes(database, limit):
    result = CliRunner().invoke(main, ["import-versions", "--max-changes", limit])
    assert result.exit_code == 2 and "--max-changes" in result.output


def test_a_held_lock_is_retried_and_bad_input_is_not(pg_database, pg_app, monkeypatch):
    import cachework.importers.versions as module

    task = pg_app.tasks["cachework.import_versions"]
    with pg_database.session() as session:
        seed(session, projects=1, products=3)
    monkeypatch.setattr(task, "update_state", lambda **kw: None)
    attempts: list[str] = []
    real_import = module.import_versions
    holder = pg_database.engine.connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
    holder.commit()

    def import_once_the_other_import_ends(*args, **kwargs):
        try:
            return real_import(*args, **kwargs)
        except Exception as exc:
            attempts.append(type(exc).__name__)
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            holder.commit()
            raise

    monkeypatch.setattr(module, "import_versions", import_once_the_other_import_ends)
    try:
        # Eager `apply()` runs Celery's autoretry inline (no countdown): a real lock held by
        # "another import" fails the first attempt, the retry succeeds.
        retried = task.apply(kwargs={"models": ["Product"]})
        assert attempts == ["LockedError"]
        assert retried.successful(), retried.traceback
        assert retried.result["models"]["Product"]["created"] == 3
        bad = task.apply(kwargs={"max_changes": -1})
        assert attempts == ["LockedError", "ValidationError"]  # one attempt, no retry
        assert isinstance(bad.result, ValidationError) and bad.state == "FAILURE"
    finally:
        holder.close()
    assert issubclass(LockedError, task.autoretry_for) and task.retry_backoff
    with pg_database.session() as session:
        assert transactions(session) == 1


def test_enqueue_through_a_real_worker_on_the_embedded_default(tmp_path, worker_process):
    # No URLs: a SQLite file, the filesystem:// broker and task results in that same file.
    env = make_env(tmp_path)
    database = db.Database(settings_of(env).database_url)
    try:
        create_tables(database.engine, MODELS)
        with database.session() as session:
            seed(session, projects=1, products=15)
        worker_process(env, concurrency=1)

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*CACHEWORK, "import-versions", "--enqueue", "--timeout", "60", *args],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        for args, text in [
            (("--model", "Nope"), "unknown versioned model 'Nope'; valid names: Category"),
            (("--model", "Product", "--max-changes", "3"), "more than max_changes=3"),
        ]:
            refused = cli(*args)
            assert refused.returncode == 2, (refused.stdout, refused.stderr)
            assert text in refused.stderr and "Traceback" not in refused.stderr
        with database.session() as session:
            assert transactions(session) == 0
        done = cli("--user", "u", "--comment", "enqueued")
        assert done.returncode == 0, done.stderr
        assert "transaction 1" in done.stdout
        cells = (
            [c.strip() for c in line.split("│") if c.strip()] for line in done.stdout.splitlines()
        )
        rows = {row[0]: row[1:5] for row in cells if row and row[0] in ("Product", "Category")}
        assert rows == {"Category": ["8", "0", "0", "0"], "Product": ["15", "0", "0", "0"]}
        with database.session() as session:
            assert transactions(session) == 1
            versions = sa.text("SELECT count(*) FROM products_version WHERE transaction_id = 1")
            assert session.execute(versions).scalar_one() == 15
            meta = sa.text("SELECT key, value FROM transaction_meta WHERE transaction_id = 1")
            assert dict(session.execute(meta).all()) == {"user": "u", "comment": "enqueued"}
    finally:
        database.dispose()
