"""Task-start catch-up, the task and the CLI, in-process. The in-process test worker sends
no `worker_ready`, so no listener thread runs there and these tests see the catch-up alone;
a real `celery worker -P solo` starts its listener and relay (the last test)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cachework.cache import jobs
from cachework.cache.invalidation import DatabaseLog, publish
from cachework.errors import NotFoundError, ValidationError
from tests.conftest import make_env, settings_of


@pytest.fixture
def seeded(database):
    from demo.seed import seed

    with database.session() as session:
        seed(session, projects=2, products=10)
    return database


@pytest.fixture
def registry(runtime):
    return runtime.registry


def _rename(engine: sa.Engine, key: int, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE categories SET name = :n WHERE id = :k"), {"n": name, "k": key}
        )


def test_task_start_catch_up_alone_keeps_a_solo_worker_fresh(
    tmp_path, seeded, registry, redis_url, inprocess_worker
):
    from cachework.worker import create_app

    results = f"db+sqlite:///{tmp_path / 'results.db'}"  # no pooled PG connection left over
    env = make_env(
        tmp_path,
        database_url=seeded.url,
        broker_url=redis_url,
        result_backend=results,
        redis_url="off",  # the log this test publishes to: the database's
    )
    app = create_app(settings_of(env))
    try:
        inprocess_worker(app)
        assert not app.runtime.listening  # no listener thread in this in-process worker

        def lookup() -> str:
            result = app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1})
            return result.get(timeout=20, interval=0.01)["name"]

        assert lookup() == "Tools"
        _rename(seeded.engine, 1, "Renamed")
        assert lookup() == "Tools"  # really cached: nobody said otherwise
        event_id = publish("categories", [1], log=DatabaseLog(seeded.engine))
        assert lookup() == "Renamed"
        worker_registry = app.runtime.registry  # the worker app's own runtime
        assert worker_registry.cursor == event_id
        assert worker_registry.listener["catch_ups"] == 1
        assert worker_registry.listener["drops"] == 0
    finally:
        app.runtime.close()
        app.close()


def test_a_web_app_starts_its_listener_with_one_call(seeded, runtime, registry):
    from tests.invalidation_helpers import wait_until

    log = DatabaseLog(seeded.engine)
    publish("categories", [2], log=log)  # an old event: the log is not empty
    assert registry.table("categories").get(1)["name"] == "Tools"  # read before the start
    _rename(seeded.engine, 1, "Renamed")
    publish("categories", [1], log=log)
    runtime.start()
    tracker = runtime.tracker
    try:
        assert tracker is not None and tracker.cursor == log.state().head
        assert registry.table("categories").get(1)["name"] == "Renamed"  # dropped, reloaded
        _rename(seeded.engine, 1, "Again")
        event_id = publish("categories", [1], log=log)
        wait_until(lambda: registry.cursor == event_id, timeout=5)  # the listener thread
        assert registry.table("categories").get(1)["name"] == "Again"
        assert registry.listener["catch_ups"] == 0
        runtime.wait_for(event_id, timeout=1)  # the read barrier through the same tracker
        assert runtime.listening
    finally:
        runtime.stop()
    assert not runtime.listening


def test_process_invalidation_validates_publishes_and_rebuilds(seeded, runtime):
    from demo.seed import project_uuid

    def process_invalidation(**kwargs) -> dict:
        return jobs.invalidate(runtime, **kwargs)

    engine_log = DatabaseLog(seeded.engine)
    with pytest.raises(NotFoundError, match=r"'nope'.*categories.*products"):
        process_invalidation(table="nope")
    with pytest.raises(ValidationError, match=r"keys\[0\].*'abc'"):
        process_invalidation(table="categories", keys=["abc"])
    with pytest.raises(NotFoundError):
        process_invalidation(table="products", project="00000000-0000-4000-8000-000000000000")
    assert engine_log.state().head == "0"  # bad input published nothing
    result = process_invalidation(table="categories", keys=["1", 2])
    assert result == {"event_id": engine_log.state().head, "rebuilt": 0}
    assert '"keys":[1,2]' in engine_log.read("0").entries[0][1]
    scoped = process_invalidation(table="products", project=project_uuid(0), app_name="inventory")
    assert scoped["rebuilt"] == 2 and scoped["event_id"] != result["event_id"]


def test_cli_invalidate_publishes_and_reports_errors_in_one_line(seeded, registry):
    from cachework.worker.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["invalidate", "categories", "3", "4"])
    assert ok.exit_code == 0, ok.output
    head = DatabaseLog(seeded.engine).state().head
    assert f"published invalidation {head} for categories (2 key(s))" in ok.output
    bad = runner.invoke(main, ["invalidate", "categories", "x"])
    assert bad.exit_code == 2 and "keys[0]" in bad.output and "Traceback" not in bad.output
    unknown = runner.invoke(main, ["invalidate", "nope"])
    assert unknown.exit_code == 2 and "known tables:" in unknown.output
    assert DatabaseLog(seeded.engine).state().head == head


def test_a_solo_pool_worker_runs_the_outbox_relay_and_the_listener(
    tmp_path, pg_database, redis_url, worker_process
):
    """`celery worker -P solo` has no pool children: its own process must relay committed
    outbox rows and tail the log, and stop both at shutdown."""
    from demo.seed import seed
    from tests.invalidation_helpers import wait_until

    with pg_database.session() as session:
        seed(session, projects=2, products=10)
    url = pg_database.engine.url.render_as_string(hide_password=False)
    env = make_env(
        tmp_path, database_url=url, broker_url=redis_url, result_backend=redis_url, redis_url="off"
    )
    node, app = worker_process(env, concurrency=1, pool="solo")

    def call(name: str, **kwargs) -> dict:
        return app.send_task(name, kwargs=kwargs).get(timeout=20, interval=0.01)

    assert call("cachework.lookup", table="categories", key=1)["name"] == "Tools"
    log = DatabaseLog(pg_database.engine)
    with pg_database.session() as session:  # the data change and its event, one commit
        session.execute(sa.text("UPDATE categories SET name = 'Renamed' WHERE id = 1"))
        assert publish("categories", [1], session=session) is None  # outbox only, no relay
        session.commit()
    wait_until(lambda: log.state().head != "0", timeout=10)  # the solo worker's relay
    head = log.state().head
    status = wait_until(
        lambda: (s := call("cachework.cache_status"))["cursor"] == head and s, timeout=10
    )
    assert status["listener"]["connected"] is True  # its listener thread is running
    assert call("cachework.lookup", table="categories", key=1)["name"] == "Renamed"
    assert node.stop() == 0  # the threads stopped: a clean warm shutdown
