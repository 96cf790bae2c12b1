"""Migrations of cachework's own tables (cachework.migrate, `cachework db`, `initdb`).

A database made by cachework before migrations existed (its own `create_all`, with data in
every table) is upgraded by `cachework initdb` and loses nothing; the baseline plus every
revision equals the code's tables; a schema behind head stops the CLI and a real worker
with one line naming the command to run; an invalidation log made before it refused
explicit ids refuses them after an upgrade (0003), under readers that notice nothing.
"""

from __future__ import annotations

import json
import re
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

from cachework import migrate
from cachework.cache.invalidation import DatabaseLog, Tracker, publish
from cachework.schema import BigId, invalidation_log, own_metadata
from cachework.worker.cli import main
from tests.conftest import MODELS, make_env
from tests.invalidation_helpers import FakeTarget

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
        # Made by create_all of a code with revision 0004, which then leaves it as it is.
        conn.execute(tables["cache_fences"].insert(), [{"key": "inventory:p-1", "token": 7}])
        # Made by create_all of a code with revision 0006, which then leaves them as they are.
        conn.execute(
            tables["cache_changes"].insert(),
            [{"project": "p-1", "app_name": "inventory", "name": "summary", "changed_ms": 5}],
        )
        conn.execute(tables["cache_change_cursor"].insert(), [{"name": "changes", "cursor": "2"}])
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
        assert "cachework schema at 0006 (head)" in done.output

        assert _snapshot(engine) == before
        assert migrate.state(engine).current
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLite: the expression index is not reflected
            indexes = {i["name"] for i in sa.inspect(engine).get_indexes("cache_items")}
        assert NEW_INDEX in indexes
        assert _diffs(engine) == []
        assert _refuses_explicit_ids(engine)
        again = _cli(monkeypatch, tmp_path, any_db_url, "db", "upgrade")
        assert again.exit_code == 0 and "already at head 0006" in again.output
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
        assert _refuses_explicit_ids(engine)  # the baseline makes the log as head does
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
    assert result.exit_code == 0 and result.output.strip() == "0006 (head)"
    history = _cli(monkeypatch, tmp_path, sqlite_url, "db", "history").output.splitlines()
    assert [line.split()[0] for line in history] == ["0006", "0005", "0004", "0003", "0002", "0001"]


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
        "error: the database's cachework schema is behind (at 0001, head 0006): "
        "run `cachework db upgrade`"
    ]


def test_behind_schema_stops_a_real_worker_with_one_line(behind_url, tmp_path):
    env = make_env(tmp_path, database_url=behind_url, redis_url="off")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "cachework.worker",
            "worker",
            "-P",
            "solo",
            "-l",
            "WARNING",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the database's cachework schema is behind (at 0001, head 0006): "
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
        "error: cachework's tables in the database differ from revision 0006: column "
        "cache_items.user missing (restore them from a backup, or repair them by hand)"
    ]
    current = _cli(monkeypatch, tmp_path, any_db_url, "db", "current")
    assert current.exit_code == 1
    assert "0006 (head), but the tables differ: column cache_items.user missing" in current.output


# --- 0003: the invalidation log takes ids from its own sequence only ----------------------

OWN_IDS_ONLY = "ids come from its own sequence only|non-DEFAULT value into column"


def _old_log(engine: sa.Engine, rows: list[dict]) -> None:
    """Replace invalidation_log by the shape cachework made before it refused explicit ids
    (a plain BIGSERIAL on PostgreSQL, no triggers on SQLite), holding `rows`."""
    old = sa.MetaData()
    table = sa.Table(
        "invalidation_log",
        old,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("data", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE invalidation_log"))
        old.create_all(conn)
        for row in rows:  # one by one: explicit and sequence ids interleaved
            conn.execute(table.insert(), [row])
    assert _takes_explicit_id(engine), "not the old shape"


def _takes_explicit_id(engine: sa.Engine, explicit: int = 10**12) -> bool:
    """Whether the log accepts a row with an id of its own (rolled back either way)."""
    with engine.connect() as conn:
        try:
            conn.execute(invalidation_log.insert().values(id=explicit, data="{}"))
        except sa.exc.DBAPIError as exc:
            assert re.search(OWN_IDS_ONLY, str(exc)), exc
            return False
        finally:
            conn.rollback()
    return True


def _refuses_explicit_ids(engine: sa.Engine) -> bool:
    return not any(_takes_explicit_id(engine, explicit) for explicit in (10**12, 0, -1))


def _log_rows(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        query = sa.select(invalidation_log.c.id, invalidation_log.c.data)
        return [tuple(row) for row in conn.execute(query.order_by(invalidation_log.c.id))]


def _log_oid(engine: sa.Engine) -> int | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT 'invalidation_log'::regclass::oid")).scalar_one()


def _event(key: int) -> str:
    return json.dumps({"v": 1, "table": "categories", "keys": [key]})


@pytest.mark.parametrize("made", ["adopted at 0002", "before migrations"])
def test_0003_makes_an_old_log_refuse_explicit_ids_and_keeps_its_readers(any_db_url, made):
    """A log made before cachework refused explicit ids (the sequence at 2, an explicit
    row at 500) refuses them after `upgrade`; the next id is above 500, no row is lost,
    the table is the same (PostgreSQL oid) and a reader following it neither drops its
    tables nor misses an event."""
    engine = sa.create_engine(any_db_url, poolclass=sa.pool.NullPool)
    try:
        if made == "before migrations":
            engine.dispose()
            engine = _pre_migrations_database(any_db_url)
        else:
            with engine.begin() as conn:
                command.upgrade(migrate.config(conn), "0002")
        _old_log(engine, [{"data": _event(1)}, {"data": _event(2)}, {"id": 500, "data": _event(3)}])
        rows, oid = _log_rows(engine), _log_oid(engine)
        assert [row[0] for row in rows] == [1, 2, 500]
        log = DatabaseLog(engine)
        target = FakeTarget(names=("categories",))
        tracker = Tracker(target, log)
        tracker.sync()
        # PostgreSQL: its sequence never handed out 500, so a reader does not follow it
        # (issue 18); SQLite's AUTOINCREMENT counter moved to 500 with the row.
        assert target.cursor == ("2" if engine.dialect.name == "postgresql" else "500")
        epoch = log.state().epoch

        before, after = migrate.upgrade(engine)
        assert (before, after) == (None if made == "before migrations" else "0002", "0006")
        assert migrate.state(engine).current and migrate.differences(engine) == []

        assert _refuses_explicit_ids(engine)
        assert _log_rows(engine) == rows
        assert _log_oid(engine) == oid and log.state().epoch == epoch
        assert int(publish("categories", [7], log=log)) == 501
        tracker.sync()
        assert target.dropped == [] and target.invalidated[-1] == ("categories", [7])
        assert target.cursor == "501"
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                identity = conn.execute(
                    sa.text(
                        "SELECT attidentity FROM pg_attribute "
                        "WHERE attrelid = 'invalidation_log'::regclass AND attname = 'id'"
                    )
                ).scalar_one()
                sequences = (
                    conn.execute(
                        sa.text(
                            "SELECT relname FROM pg_class "
                            "WHERE relkind = 'S' AND relname LIKE 'invalidation_log%'"
                        )
                    )
                    .scalars()
                    .all()
                )
            assert identity == "a" and sequences == ["invalidation_log_id_seq"]
    finally:
        engine.dispose()


def test_0003_starts_above_ids_the_old_sequence_handed_out(pg_url):
    """PostgreSQL: ids the old sequence handed out to rows since gone (rolled back,
    emptied) are never handed out again: the identity starts above the sequence."""
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            command.upgrade(migrate.config(conn), "0002")
        _old_log(engine, [{"data": _event(1)}, {"data": _event(2)}])
        with engine.connect() as conn:  # ids 3..900 taken by transactions that rolled back
            conn.execute(
                sa.text("SELECT setval(pg_get_serial_sequence('invalidation_log', 'id'), 900)")
            )
            conn.commit()
        migrate.upgrade(engine)
        assert _refuses_explicit_ids(engine)
        assert DatabaseLog(engine).append(_event(3)) == "901"
    finally:
        engine.dispose()


def test_0003_makes_an_identity_by_default_refuse_explicit_ids(pg_url):
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            command.upgrade(migrate.config(conn), "0002")
            conn.execute(
                sa.text("ALTER TABLE invalidation_log ALTER COLUMN id SET GENERATED BY DEFAULT")
            )
        log = DatabaseLog(engine)
        first = log.append(_event(1))
        assert _takes_explicit_id(engine)
        migrate.upgrade(engine)
        assert _refuses_explicit_ids(engine)
        assert int(log.append(_event(2))) == int(first) + 1
    finally:
        engine.dispose()


def test_0003_down_and_up_again_from_a_database_made_at_head(any_db_url):
    """A database made at head refuses explicit ids; 0003 downgraded takes them again
    (a sequence above every id handed out), upgraded refuses them; ids only grow and the
    table stays the same throughout."""
    engine = sa.create_engine(any_db_url, poolclass=sa.pool.NullPool)
    try:
        assert migrate.upgrade(engine) == (None, "0006")
        assert _refuses_explicit_ids(engine)
        log = DatabaseLog(engine)
        ids = [int(log.append(_event(k))) for k in range(3)]
        oid = _log_oid(engine)

        with engine.begin() as conn:
            command.downgrade(migrate.config(conn), "0002")
        assert migrate.state(engine).revision == "0002"
        assert _takes_explicit_id(engine)
        ids.append(int(log.append(_event(3))))
        migrate.upgrade(engine)
        assert migrate.state(engine).current and _refuses_explicit_ids(engine)
        ids.append(int(log.append(_event(4))))

        assert ids == sorted(set(ids)) and ids[-1] == ids[0] + 4
        assert [row[0] for row in _log_rows(engine)] == ids
        assert _log_oid(engine) == oid
    finally:
        engine.dispose()
