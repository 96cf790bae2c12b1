"""Project cache jobs through real prefork workers on PostgreSQL + Redis.

One environment per module (two worker nodes of one process each, so "two worker
processes" are two separate nodes), each node also consuming a queue of its own so a test
can send a request to a chosen process.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from cachework import database as db
from cachework.cache.items import store
from cachework.cache.items.projects import ProjectSource
from cachework.settings import load_settings
from cachework.worker import create_app
from cachework.worker.schema import create_tables
from cachework.worker.spawn import WorkerProcess
from demo.seed import project_uuid, seed
from tests.conftest import MODELS, make_env
from tests.project_cache_helpers import (
    HOLD_KEY,
    actual_demo_items,
    expected_demo_items,
    intervals_key,
    price_total,
    started_key,
)

PROJECTS = 6
NODES = ("a", "b")


@pytest.fixture(scope="module")
def env(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    engine = sa.create_engine(pg_server_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    tmp = tmp_path_factory.mktemp("project-cache-worker")
    values = make_env(
        tmp,
        database_url=pg_server_url,
        broker_url=redis_server_url,
        result_backend=redis_server_url,
        redis_url=redis_server_url,
        models="demo.models,tests.project_cache_helpers",
    )
    database = db.Database(pg_server_url)
    create_tables(database.engine, MODELS)
    with database.session() as session:
        seed(session, projects=PROJECTS, products=120)
    app = create_app(load_settings(values))
    nodes = []
    try:
        for name in NODES:
            node = WorkerProcess(
                values,
                concurrency=1,
                name=f"{name}{time.monotonic_ns()}@127.0.0.1",
                queues=("cache", "versions", "invalidations", f"node-{name}"),
                logfile=tmp / f"worker-{name}.log",
            ).start()
            nodes.append(node)
        for node in nodes:
            node.wait_ready(app, timeout=90)
        client = redis.Redis.from_url(redis_server_url)
        yield {
            "app": app,
            "database": database,
            "redis": client,
            "nodes": nodes,
            "settings": load_settings(values),
        }
        client.close()
    finally:
        for node in nodes:
            node.stop()
        app.close()
        database.dispose()


def _call(env, name: str, queue: str | None = None, timeout: float = 60, **kwargs) -> dict:
    return (
        env["app"].send_task(name, kwargs=kwargs, queue=queue).get(timeout=timeout, interval=0.05)
    )


def _clear(env) -> None:
    with env["database"].session() as session:
        session.execute(sa.delete(store.cache_items))
        session.execute(sa.text("UPDATE projects SET title = 'Project ' || uuid"))


def test_sync_all_projects_fans_out_and_matches_sql(env):
    _clear(env)
    result = _call(env, "cachework.sync_cache", app_name="inventory", user="ci")
    assert result == {"updated": 2 * PROJECTS, "projects": PROJECTS, "errors": []}
    with env["database"].session() as session:
        expected = expected_demo_items(session)
        assert len(expected) == PROJECTS
        assert actual_demo_items(session) == expected
        assert {i.user for p in expected for i in store.get_project_items(session, p)} == {"ci"}
        assert store.get_project_items(session, None) == []  # inventory has no site-wide items


def _change(env, project: str, delta: int) -> None:
    with env["database"].session() as session:  # a change, committed, then its request
        session.execute(
            sa.text("UPDATE products SET price = price + :d WHERE project_uuid = :p"),
            {"d": delta, "p": project},
        )


def _sync_on(env, node: str, project: str):
    return env["app"].send_task(
        "cachework.sync_cache",
        kwargs={"project": project, "app_name": "recorder"},
        queue=f"node-{node}",
    )


def _assert_disjoint_and_current(env, project: str) -> list:
    raw = env["redis"].lrange(intervals_key(project), 0, -1)
    intervals = sorted(json.loads(r) for r in raw)
    assert intervals, "the recorder plugin never ran"
    for (_s1, end, _p1), (start, _e2, _p2) in itertools.pairwise(intervals):
        assert start >= end, f"rebuilds of one project overlapped: {intervals}"
    with env["database"].session() as session:
        expected = price_total(session, project)
        item = store.get_item(session, "recorder", "total", project=project)
    assert item.data == {"sum": expected}
    return intervals


def test_a_sync_requested_while_one_runs_is_folded_into_it(env):
    """Node a is mid-rebuild when a change is committed and node b is asked: b's request
    marks the scope dirty and returns at once; a loops and writes the new state."""
    _clear(env)
    project = project_uuid(1)
    client = env["redis"]
    client.delete(intervals_key(project), started_key(project))
    client.set(HOLD_KEY, 2.0)
    try:
        first = _sync_on(env, "a", project)
        assert client.blpop(started_key(project), timeout=30) is not None
        _change(env, project, 5)
        second = _sync_on(env, "b", project).get(timeout=30, interval=0.05)
        assert second == {"updated": 0, "projects": 1, "errors": []}  # deferred, not lost
        assert not first.ready()  # b answered while a still held the lock
        assert first.get(timeout=60, interval=0.05) == {"updated": 2, "projects": 1, "errors": []}
    finally:
        client.delete(HOLD_KEY)
    intervals = _assert_disjoint_and_current(env, project)
    assert len(intervals) == 2 and len({pid for _s, _e, pid in intervals}) == 1


def test_two_concurrent_syncs_never_overlap_and_the_last_change_wins(env):
    _clear(env)
    project = project_uuid(0)
    env["redis"].delete(intervals_key(project))
    pending = []
    for step in range(6):
        _change(env, project, step + 1)
        pending.append(_sync_on(env, NODES[step % 2], project))
        time.sleep(0.15)  # requests land while a 0.4 s rebuild may run on the other node
    results = [r.get(timeout=60, interval=0.05) for r in pending]
    assert all(r["errors"] == [] for r in results)
    assert {r.worker for r in pending} == {n.name for n in env["nodes"]}  # two processes
    _assert_disjoint_and_current(env, project)


def test_a_failing_plugin_for_one_project_does_not_stop_the_others(env):
    _clear(env)
    failing = project_uuid(2)
    with env["database"].session() as session:
        session.execute(
            sa.text("UPDATE projects SET title = 'FAIL x' WHERE uuid = :u"), {"u": failing}
        )
    for i in range(PROJECTS):
        env["redis"].delete(intervals_key(project_uuid(i)))
    result = _call(env, "cachework.sync_cache")
    assert result["projects"] == PROJECTS
    assert result["errors"] == [
        f"flaky failed for project {failing}: RuntimeError: cannot rebuild 'FAIL x'"
    ]
    with env["database"].session() as session:
        assert store.get_item(session, "flaky", "value", project=failing) is None
        assert store.get_item(session, "inventory", "summary", project=failing) is not None
        for i in set(range(PROJECTS)) - {2}:
            assert store.get_item(session, "flaky", "value", project=project_uuid(i)) is not None
        assert store.get_item(session, "flaky", "value").data == {"site": True}  # site-wide
    # The fan-out was shared: the recorder's per-project rebuilds ran on both processes.
    pids = {
        json.loads(raw)[2]
        for i in range(PROJECTS)
        for raw in env["redis"].lrange(intervals_key(project_uuid(i)), 0, -1)
    }
    assert len(pids) == 2, pids


def test_delete_for_one_project_through_the_worker_leaves_the_others(env):
    _clear(env)
    _call(env, "cachework.sync_cache", app_name="inventory")
    target = project_uuid(4)
    assert _call(env, "cachework.delete_cache", project=target) == {"deleted": 2}
    with env["database"].session() as session:
        remaining = session.execute(
            sa.text("SELECT project, COUNT(*) FROM cache_items GROUP BY project")
        ).all()
    assert dict(remaining) == {project_uuid(i): 2 for i in range(PROJECTS) if i != 4}


def test_bad_arguments_fail_the_task_without_retry(env):
    result = env["app"].send_task("cachework.sync_cache", kwargs={"project": "nope"})
    with pytest.raises(Exception, match="project='nope' is not a uuid"):
        result.get(timeout=30, interval=0.05)
    assert result.status == "FAILURE"


def test_demo_step_syncs_reads_and_deletes_through_the_worker(env):
    """The `cachework demo` step for project caches, against the real worker: it prints
    the items it read, and they are the stored (correct) ones."""
    from types import SimpleNamespace

    from rich.console import Console

    from cachework.worker.demo_steps.project_cache import run

    _clear(env)
    console = Console(record=True, width=400)
    ctx = SimpleNamespace(
        console=console,
        database=env["database"],
        settings=env["settings"],
        call=lambda name, timeout=60, **kwargs: _call(env, name, timeout=timeout, **kwargs),
    )
    run(ctx)
    output = console.export_text()
    assert f"'projects': {PROJECTS}, 'errors': []" in output
    with env["database"].session() as session:
        projects = ProjectSource.from_settings(env["settings"]).list(session)
        assert store.get_project_items(session, projects[0]) == []  # deleted, every app
        shown = store.get_project_items(session, projects[1], "inventory")
        assert [i.name for i in shown] == ["by_category", "summary"]
        for item in shown:
            assert f"inventory/{item.name} " in output
            assert json.dumps(item.data) in output
        expected = expected_demo_items(session)
        del expected[projects[0]]
        assert actual_demo_items(session) == expected
    assert f"cachework.delete_cache(project={projects[0][:8]}…) -> {{'deleted': " in output
