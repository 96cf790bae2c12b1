"""Migrations of cachework's own tables (cache.migrate, `cachework db`, `initdb`).

A database made by cachework before migrations existed (its own `create_all`, with data in
every table) is upgraded by `cachework initdb` and loses nothing; the baseline plus every
revision equals the code's tables; a schema behind head stops the CLI and a real worker
with one line naming the command to run.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from cache import migrate
from cache.schema import own_metadata
from tests.conftest import MODELS, make_env
from worker.cli import main

NEW_INDEX = "ix_cache_items_project"  # added by revision 0002


def _pre_migrations_database(url: str) -> sa.Engine:
    """What `cachework initdb` made before migrations: the app's tables and ours by
    `create_all` as the code stood at the baseline (no 0002 index, no version table)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    for metadata in MODELS.metadatas:
        metadata.create_all(engine)
    own_metadata().create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX {NEW_INDEX}"))
    return engine


def _fill_every_table(engine: sa.Engine) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    tables = own_metadata().tables
    with engine.begin() as conn:
        conn.execute(
            tables["cache_items"].insert(),
            [
                {"project": p, "app_name": "inventory", "name": n, "data_type": "json",
                 "data": {"n": i, "p": p}, "user": "alice", "created_at": now, "updated_at": now}
                for i, (p, n) in enumerate([(None, "summary"), ("p-1", "summary"),
                                            ("p-1", "by_category"), ("p-2", "summary")])
            ],
        )  # fmt: skip
        conn.execute(
            tables["cache_locks"].insert(),
            [{"key": "inventory:p-1", "owner": "w1", "expires_ms": 9}],
        )
        conn.execute(tables["cache_dirty"].insert(), [{"key": "inventory:p-1", "name": "summary"}])
        conn.execute(tables["cache_taken"].insert(), [{"key": "inventory:p-2", "name": "*"}])
        conn.execute(
            tables["invalidation_log"].insert(), [{"data": '{"e": 1}'}, {"data": '{"e": 2}'}]
        )
        conn.execute(tables["invalidation_outbox"].insert(), [{"data": '{"o": 1}'}])
        conn.execute(sa.text("INSERT INTO projects (uuid, title) VALUES ('p-1', 'One')"))
        conn.execute(sa.text("INSERT INTO categories (id, code, name) VALUES (1, 'c1', 'Cat')"))


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    names = [*own_metadata().tables, "projects", "categories"]
    meta = sa.MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLite: the expression index is not reflected
        meta.reflect(engine, only=names)
    with engine.connect() as conn:
        return {
            name: sorted(
                (tuple(str(v) for v in row) for row in conn.execute(sa.select(meta.tables[name]))),
            )
            for name in names
        }


def _diffs(engine: sa.Engine) -> list:
    with engine.connect() as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Alembic skips the expression index, with a warning
        context = MigrationContext.configure(
            conn,
            opts={
                "include_object": lambda o, n, t, r, c: t != "table" or n in own_metadata().tables
            },
        )
        return compare_metadata(context, own_metadata())


def _cli(monkeypatch, tmp_path, url: str, *args: str):
    monkeypatch.setenv("CACHEWORK_DATABASE_URL", url)
    monkeypatch.setenv("CACHEWORK_DATA_DIR", str(tmp_path / "cachework"))
    monkeypatch.setenv("CACHEWORK_REDIS_URL", "off")
    return CliRunner().invoke(main, list(args))


def test_initdb_upgrades_a_pre_migrations_database_and_loses_nothing(
    any_db_url, tmp_path, monkeypatch
):
    engine = _pre_migrations_database(any_db_url)
    try:
        _fill_every_table(engine)
        before = _snapshot(engine)
        assert all(before.values()), {k: len(v) for k, v in before.items()}
        assert migrate.state(engine).revision is None

        refused = _cli(monkeypatch, tmp_path, any_db_url, "delete-cache")
        assert refused.exit_code == 2
        assert "run `cachework db upgrade`" in refused.output

        done = _cli(monkeypatch, tmp_path, any_db_url, "initdb")
        assert done.exit_code == 0, done.output
        assert "cachework schema at 0002 (head)" in done.output

        assert _snapshot(engine) == before
        assert migrate.state(engine).current
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLite: the expression index is not reflected
            indexes = {i["name"] for i in sa.inspect(engine).get_indexes("cache_items")}
        assert NEW_INDEX in indexes
        assert _diffs(engine) == []
        again = _cli(monkeypatch, tmp_path, any_db_url, "db", "upgrade")
        assert again.exit_code == 0 and "already at head 0002" in again.output
        assert _snapshot(engine) == before
    finally:
        engine.dispose()


def test_baseline_plus_revisions_equal_the_code_and_leave_the_app_alone(any_db_url):
    engine = sa.create_engine(any_db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE app_own (id INTEGER PRIMARY KEY)"))
            command.upgrade(migrate.config(conn), migrate.BASELINE)
        assert migrate.state(engine).revision == "0001"
        migrate.upgrade(engine)
        assert migrate.state(engine).current
        assert _diffs(engine) == []
        names = set(sa.inspect(engine).get_table_names())
        assert "app_own" in names and "alembic_version" not in names
        assert migrate.VERSION_TABLE in names
    finally:
        engine.dispose()


def test_db_commands(sqlite_url, tmp_path, monkeypatch):
    result = _cli(monkeypatch, tmp_path, sqlite_url, "db", "current")
    assert result.exit_code == 1 and "run `cachework initdb`" in result.output
    assert _cli(monkeypatch, tmp_path, sqlite_url, "db", "upgrade").exit_code == 0
    result = _cli(monkeypatch, tmp_path, sqlite_url, "db", "current")
    assert result.exit_code == 0 and result.output.strip() == "0002 (head)"
    history = _cli(monkeypatch, tmp_path, sqlite_url, "db", "history").output.splitlines()
    assert [line.split()[0] for line in history] == ["0002", "0001"]


@pytest.fixture
def behind_url(pg_url):
    """A PostgreSQL database whose cachework tables are at the baseline (behind head)."""
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    for metadata in MODELS.metadatas:
        metadata.create_all(engine)
    with engine.begin() as conn:
        command.upgrade(migrate.config(conn), migrate.BASELINE)
    engine.dispose()
    return pg_url


def test_behind_schema_stops_the_cli_with_the_command_to_run(behind_url, tmp_path, monkeypatch):
    for args in (["sync-cache"], ["import-versions", "--dry-run"], ["db", "current"]):
        result = _cli(monkeypatch, tmp_path, behind_url, *args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert "run `cachework db upgrade`" in result.output, (args, result.output)
    result = _cli(monkeypatch, tmp_path, behind_url, "sync-cache")
    assert result.output.strip().splitlines() == [
        "error: the database's cachework schema is behind (at 0001, head 0002): "
        "run `cachework db upgrade`"
    ]


def test_behind_schema_stops_a_real_worker_with_one_line(behind_url, tmp_path):
    env = make_env(tmp_path, database_url=behind_url, redis_url="off")
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "solo", "-l", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the database's cachework schema is behind (at 0001, head 0002): "
        "run `cachework db upgrade`"
    )


def test_initdb_does_not_call_tables_with_a_dropped_column_ready(any_db_url, tmp_path, monkeypatch):
    assert _cli(monkeypatch, tmp_path, any_db_url, "initdb").exit_code == 0
    engine = sa.create_engine(any_db_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text('ALTER TABLE cache_items DROP COLUMN "user"'))
    engine.dispose()
    result = _cli(monkeypatch, tmp_path, any_db_url, "initdb")
    assert result.exit_code == 2 and "database ready" not in result.output
    assert result.output.strip().splitlines() == [
        "error: cachework's tables in the database differ from revision 0002: column "
        "cache_items.user missing (restore them from a backup, or repair them by hand)"
    ]
    current = _cli(monkeypatch, tmp_path, any_db_url, "db", "current")
    assert current.exit_code == 1
    assert "0002 (head), but the tables differ: column cache_items.user missing" in current.output
