"""A real prefork worker over each broker; fork safety of the engine."""

from __future__ import annotations

import pytest

from tests.conftest import make_env


def _ping_until_two_children(app, attempts: int = 10) -> dict[int, dict]:
    """Pings sent two at a time, each holding its child, until two children answered."""
    seen: dict[int, dict] = {}
    for _ in range(attempts):
        pending = [app.send_task("cachework.ping", kwargs={"hold": 0.5}) for _ in range(2)]
        for result in pending:
            answer = result.get(timeout=30, interval=0.05)
            seen[answer["pid"]] = answer
        if len(seen) == 2:
            break
    return seen


@pytest.mark.parametrize("broker", ["redis", "amqp", "filesystem"])
def test_prefork_worker_runs_task_by_name_over_each_broker(
    broker, request, tmp_path, sqlite_url, worker_process
):
    broker_url = {
        "redis": lambda: request.getfixturevalue("redis_url"),
        "amqp": lambda: request.getfixturevalue("amqp_url"),
        "filesystem": lambda: "filesystem://",
    }[broker]()
    env = make_env(tmp_path, database_url=sqlite_url, broker_url=broker_url)
    node, app = worker_process(env)
    result = app.send_task("cachework.ping")
    answer = result.get(timeout=30, interval=0.05)
    assert answer["dialect"] == "sqlite"
    assert answer["pid"] != node.proc.pid  # ran in a pool child, not the main process
    assert result.status == "SUCCESS"


def test_each_prefork_child_has_its_own_postgres_connection(
    tmp_path, pg_url, redis_url, worker_process
):
    env = make_env(tmp_path, database_url=pg_url, broker_url=redis_url)
    _node, app = worker_process(env, concurrency=2)
    seen = _ping_until_two_children(app)
    assert len(seen) == 2, f"only saw children {sorted(seen)}"
    backends = {answer["backend"] for answer in seen.values()}
    assert len(backends) == 2, f"children share a PostgreSQL connection: {seen}"
    assert all(a["dialect"] == "postgresql" for a in seen.values())


def test_inprocess_worker_runs_a_task(tmp_path, sqlite_url, redis_url, inprocess_worker):
    from tests.conftest import settings_of
    from worker import create_app, db

    app = create_app(settings_of(make_env(tmp_path, database_url=sqlite_url, broker_url=redis_url)))
    database = db.Database(sqlite_url)
    previous = db.set_database(database)
    try:
        inprocess_worker(app)
        answer = app.send_task("cachework.ping").get(timeout=20, interval=0.05)
        assert answer["dialect"] == "sqlite"
    finally:
        db.set_database(previous)
        database.dispose()
        app.close()
