"""CACHEWORK_DATABASE_POOLER and the URL's `prepare_threshold` (cachework/pooler.py): parsed at
settings load, applied to every engine cachework makes (ours, the health check's, Celery's
result backend). The PgBouncer runs themselves are in tests/test_topology_pgbouncer.py."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import celeryconfig
from cachework import database as db
from cachework.errors import ConfigError
from cachework.pooler import connect_args, result_engine_options
from cachework.worker.process_health import check_database
from tests.conftest import make_env, settings_of

PG = "postgresql://u@127.0.0.1:6432/app"


def _settings(tmp_path, **values):
    return settings_of(make_env(tmp_path, **values))


def test_the_default_is_no_pooler_and_changes_nothing(tmp_path):
    s = _settings(tmp_path, database_url=PG)
    assert s.database_pooler == "none"
    assert connect_args(s.database_url, s.database_pooler) == {}
    assert celeryconfig.build(s)["database_engine_options"] == {}


@pytest.mark.parametrize(
    ("raw", "mode"), [("transaction", "transaction"), (" Session ", "session")]
)
def test_pooler_modes_are_read(tmp_path, raw, mode):
    assert _settings(tmp_path, database_url=PG, database_pooler=raw).database_pooler == mode


def test_transaction_pooling_turns_prepared_statements_off_everywhere(tmp_path):
    s = _settings(tmp_path, database_url=PG, database_pooler="transaction")
    assert connect_args(s.database_url, s.database_pooler) == {"prepare_threshold": None}
    # Celery's database result backend (by default our database) gets the same argument.
    assert s.result_backend == "db+" + s.database_url
    assert celeryconfig.build(s)["database_engine_options"] == {
        "connect_args": {"prepare_threshold": None}
    }
    assert result_engine_options("redis://127.0.0.1/0", "transaction") == {}
    assert connect_args("sqlite:///x.db", "transaction") == {}


def test_statement_pooling_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not supported: cachework needs transactions") as caught:
        _settings(tmp_path, database_url=PG, database_pooler="statement")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("raw", ["pgbouncer", "yes", "transactions"])
def test_an_unknown_pooler_is_named(tmp_path, raw):
    with pytest.raises(ConfigError, match=f"CACHEWORK_DATABASE_POOLER='{raw}' is not one of"):
        _settings(tmp_path, database_url=PG, database_pooler=raw)


def test_a_pooler_needs_postgresql(tmp_path):
    with pytest.raises(ConfigError, match="applies to a postgresql:// CACHEWORK_DATABASE_URL"):
        _settings(tmp_path, database_pooler="transaction")  # the embedded SQLite default


@pytest.mark.parametrize(
    ("query", "expected"),
    [("prepare_threshold=0", 0), ("prepare_threshold=12", 12), ("prepare_threshold=none", None)],
)
def test_the_url_prepare_threshold_is_read_as_psycopg_means_it(tmp_path, query, expected):
    s = _settings(tmp_path, database_url=f"{PG}?{query}", database_pooler="transaction")
    # Given in the URL it wins over the pooler's default (a pooler that tracks prepared
    # statements, PgBouncer 1.21+ with max_prepared_statements, can take a number).
    assert connect_args(s.database_url, s.database_pooler) == {"prepare_threshold": expected}
    assert connect_args(s.database_url) == {"prepare_threshold": expected}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("prepare_threshold=zero", "prepare_threshold='zero': use a number of executions"),
        ("prepare_threshold=-1", "prepare_threshold='-1': use a number of executions"),
        ("prepare_threshold=1&prepare_threshold=2", "prepare_threshold 2 times"),
    ],
)
def test_a_bad_url_prepare_threshold_is_a_config_error(tmp_path, query, message):
    with pytest.raises(ConfigError, match=f"^CACHEWORK_DATABASE_URL has {message}"):
        _settings(tmp_path, database_url=f"postgresql://u:secret@h/app?{query}")
    with pytest.raises(ConfigError, match=f"^CACHEWORK_RESULT_BACKEND has {message}"):
        _settings(
            tmp_path, database_url=PG, result_backend=f"db+postgresql+psycopg://u@h/r?{query}"
        )


def _threshold(engine: sa.Engine) -> object:
    with engine.connect() as conn:
        for _ in range(8):  # past psycopg's default threshold of 5: prepared if enabled
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        return conn.connection.driver_connection.prepare_threshold


def test_a_url_prepare_threshold_connects_where_it_used_to_be_a_type_error(pg_url):
    """The issue: `?prepare_threshold=0` reached psycopg as the string '0' (a TypeError at
    the first statement), and nothing could turn prepared statements off."""
    for query, expected in (("prepare_threshold=0", 0), ("prepare_threshold=none", None)):
        database = db.Database(f"{pg_url}?{query}")
        try:
            assert _threshold(database.engine) == expected
        finally:
            database.dispose()
        assert check_database(f"{pg_url}?{query}") is None


def test_every_engine_of_a_transaction_pooled_runtime_prepares_nothing(pg_url, tmp_path):
    from cachework.worker.runtime import Runtime

    s = _settings(tmp_path, database_url=pg_url, database_pooler="transaction", redis_url="off")
    runtime = Runtime(s)
    try:
        assert _threshold(runtime.database.engine) is None
    finally:
        runtime.stop()
        runtime.database.dispose()
    plain = db.Database(pg_url)
    try:
        assert _threshold(plain.engine) == 5  # psycopg's default, untouched without a pooler
    finally:
        plain.dispose()
