"""Regression tests of issue 18, defect 7: what a task stores in the result backend is
bounded (its result, and the arguments `result_extended` stores with every state), and an
oversized argument is refused, internal tasks included.

`send_task("cachework.sync_cache_summary", kwargs={"results": [{"updated": 1, "projects":
1, "errors": ["A" * 6_000_000]}]})` succeeded and stored 12.6 MB."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from cachework import database as db
from cachework.errors import MESSAGE_MAX, TooLargeError, TransientError
from cachework.settings import load_settings
from cachework.worker.task_base import (
    RESULT_MAX,
    STORED_ARGUMENTS_MAX,
    STORED_MAX,
    bounded_result,
    json_size,
    stored_arguments,
)
from demo.seed import seed
from tests.conftest import MODELS, make_env

SIX_MB = "A" * 6_000_000
PROJECTS = 3


# --- the rules, without a worker -------------------------------------------------------


def test_a_result_within_the_bound_is_unchanged():
    result = {"updated": 3, "projects": 2, "errors": ["p1/inventory/summary: boom"]}
    assert bounded_result("t", result) is result
    assert bounded_result("t", None) is None
    record = {"id": 1, "name": "x" * 1000}
    assert bounded_result("t", record) is record


def test_a_result_over_the_bound_keeps_its_shape():
    errors = [f"project {i}: " + "e" * 2000 for i in range(1000)]
    result = {"updated": 7, "projects": 9, "errors": errors}
    out = bounded_result("cachework.sync_cache", result, ("errors",))
    assert json_size(out) <= RESULT_MAX
    assert out["updated"] == 7 and out["projects"] == 9
    kept, note = out["errors"][:-1], out["errors"][-1]
    assert note == f"... {1000 - len(kept)} more errors left out"
    assert len(kept) > 100 and all(len(e) <= MESSAGE_MAX for e in kept)
    assert kept[0].startswith("project 0: eee") and kept[1].startswith("project 1: ")

    warnings = ["w" * 700] * 2000
    imported = {"transaction_id": 4, "dry_run": False, "models": {}, "warnings": warnings}
    out = bounded_result("cachework.import_versions", imported, ("warnings",))
    assert json_size(out) <= RESULT_MAX and out["warnings"][-1].endswith("more warnings left out")
    assert set(out) == set(imported) and out["transaction_id"] == 4


def test_a_result_that_cannot_be_cut_is_an_error_naming_the_task_and_size():
    record = {"id": 1, "tags": ["t"] * (RESULT_MAX // 5)}  # a record's list: never cut
    with pytest.raises(TooLargeError):
        bounded_result("cachework.lookup", record)
    with pytest.raises(TooLargeError):
        bounded_result(
            "cachework.sync_cache", {"errors": [], "other": "x" * RESULT_MAX}, ("errors",)
        )
    with pytest.raises(TooLargeError) as caught:
        bounded_result("cachework.lookup", {"id": 1, "name": "x" * (RESULT_MAX + 1)})
    message = str(caught.value)
    assert "cachework.lookup" in message and f"{RESULT_MAX + 22} characters" in message
    assert len(message) <= MESSAGE_MAX and "\n" not in message


def test_stored_arguments_are_as_sent_when_small_else_cut():
    assert stored_arguments(["a"], {"k": [1, 2]}) == (["a"], {"k": [1, 2]})
    args, kwargs = stored_arguments([], {"results": [{"errors": [SIX_MB]}], "b": 1})
    assert args == [] and kwargs["b"] == 1 and "characters cut" in kwargs["results"]
    assert json_size([args, kwargs]) < STORED_ARGUMENTS_MAX


PUBLIC = {  # the README's task table
    "cachework.import_versions",
    "cachework.sync_cache",
    "cachework.delete_cache",
    "cachework.process_invalidation",
    "cachework.cache_status",
    "cachework.lookup",
}


def test_every_internal_task_bounds_its_arguments(tmp_path):
    """Tasks outside the public contract are sent by our own code, and by anyone who can
    reach the broker: each refuses an oversized argument too."""
    from cachework import tasks  # noqa: F401 - registers the shared tasks
    from cachework.worker import create_app

    app = create_app(load_settings(make_env(tmp_path)))
    try:
        ours = {name: t for name, t in app.tasks.items() if name.startswith("cachework.")}
        internal = set(ours) - PUBLIC
        assert internal == {
            "cachework.sync_project_cache",
            "cachework.rebuild_changed",
            "cachework.sync_cache_summary",
            "cachework.invalidation_probe",
            "cachework.ping",
        }
        unbounded = {name for name, task in ours.items() if task.argument_limit is None}
        assert unbounded == {"cachework.process_invalidation"}  # keys: its own max keys
        assert ours["cachework.sync_cache_summary"].item_arguments == ("results",)
    finally:
        app.runtime.close()
        app.close()


# --- the base class, eagerly --------------------------------------------------------------


@pytest.fixture
def base_app():
    from celery import Celery

    from cachework.worker.task_base import CacheworkTask

    app = Celery("bounded-results", task_cls=CacheworkTask, set_as_current=False)
    seen: list[object] = []

    @app.task(name="bounded.flaky", bind=True, shared=False, max_retries=1, default_retry_delay=0)
    def flaky(self, text: str) -> int:
        seen.append(text)
        if len(seen) == 1:
            raise self.retry(exc=TransientError("once"))
        return len(text)

    @app.task(name="bounded.summary", shared=False, item_arguments=("results",))
    def summary(results: list, label: str = "") -> int:
        return len(results)

    try:
        yield app, flaky, summary, seen
    finally:
        app.close()


def test_an_oversized_argument_is_refused_naming_it_and_its_size(base_app):
    _app, flaky, summary, seen = base_app
    refused = flaky.apply(kwargs={"text": SIX_MB})
    assert isinstance(refused.result, TooLargeError) and seen == []
    message = str(refused.result)
    assert message.startswith("bounded.flaky: argument text is 6000002 characters of JSON")
    assert "nothing was done" in message and len(message) <= MESSAGE_MAX
    # an item argument: each item up to RESULT_MAX, as many items as sent
    assert summary.apply(args=[[{"e": "x" * 60_000}] * 50]).result == 50
    refused = summary.apply(args=[[{}, {"e": SIX_MB}]])
    assert "argument results[1] is 6000009 characters" in str(refused.result)
    refused = summary.apply(args=[[], "x" * 70_000])
    assert "argument label is 70002 characters" in str(refused.result)


def test_a_retry_sends_the_whole_arguments_again(base_app):
    """The request's args are cut for the backend; `retry` re-sends the whole ones."""
    _app, flaky, _summary, seen = base_app
    text = "t" * 60_000  # accepted, over STORED_ARGUMENTS_MAX: stored cut
    assert flaky.apply(kwargs={"text": text}).get() == 60_000
    assert seen == [text, text]


# --- real workers, real result backends ---------------------------------------------------


@pytest.fixture(scope="module", params=["redis", "database"])
def worker_env(request, pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    """One prefork worker on the run's PostgreSQL and its own Redis as broker; results in
    Redis or in the database (Celery's SQLAlchemy backend)."""
    from cachework.worker import create_app
    from cachework.worker.schema import create_tables
    from cachework.worker.spawn import WorkerProcess

    engine = sa.create_engine(pg_server_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    database = db.Database(pg_server_url)
    create_tables(database.engine, MODELS)
    with database.session() as session:
        seed(session, projects=PROJECTS, products=30)
    database.dispose()
    url = redis_server_url.rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(url)
    client.flushdb()
    backend = url if request.param == "redis" else "db+" + pg_server_url
    tmp = tmp_path_factory.mktemp(f"bounded-results-{request.param}")
    env = make_env(
        tmp, database_url=pg_server_url, broker_url=url, result_backend=backend, redis_url=url
    )
    app = create_app(load_settings(env))
    node = WorkerProcess(
        env, concurrency=2, name=f"bounded{time.monotonic_ns()}@127.0.0.1", logfile=tmp / "w.log"
    ).start()
    try:
        node.wait_ready(app, timeout=90)
        yield {"app": app, "kind": request.param, "redis": client, "engine": engine}
    finally:
        node.stop()
        app.runtime.close()
        app.close()
        client.flushdb()
        client.close()
        engine.dispose()


def stored_size(env: dict, task_id: str) -> int:
    """Bytes the result backend holds for `task_id`: the Redis value, or the database row's
    result, args, kwargs and traceback."""
    if env["kind"] == "redis":
        return env["redis"].strlen(f"celery-task-meta-{task_id}")
    with env["engine"].connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT coalesce(octet_length(result), 0) + coalesce(octet_length(args), 0) "
                "+ coalesce(octet_length(kwargs), 0) + coalesce(octet_length(traceback), 0) "
                "FROM celery_taskmeta WHERE task_id = :id"
            ),
            {"id": task_id},
        ).scalar_one()


def test_the_six_megabyte_summary_call_is_refused_and_stores_little(worker_env):
    """Every state stored is small, STARTED included (stored before the task runs)."""
    app = worker_env["app"]
    results = [{"updated": 1, "projects": 1, "errors": [SIX_MB]}]
    task_id = f"six-mb-{time.monotonic_ns()}"
    states = worker_env["redis"].pubsub()  # the Redis backend publishes each state stored
    states.subscribe(f"celery-task-meta-{task_id}")
    try:
        sent = app.send_task(
            "cachework.sync_cache_summary", kwargs={"results": results}, task_id=task_id
        )
        with pytest.raises(TooLargeError) as caught:
            sent.get(timeout=60, interval=0.05)
        if worker_env["kind"] == "redis":
            published, deadline = [], time.monotonic() + 10
            while len(published) < 2 and time.monotonic() < deadline:
                message = states.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    published.append(json.loads(message["data"]))
            assert [m["status"] for m in published] == ["STARTED", "FAILURE"]
            assert all(json_size(m) < 20_000 for m in published)
    finally:
        states.close()
    message = str(caught.value)
    assert message == (
        "cachework.sync_cache_summary: argument results[0] is 6000045 characters of JSON, "
        f"over the {RESULT_MAX} a task accepts; nothing was done"
    )
    assert 0 < stored_size(worker_env, sent.id) < 20_000


def test_a_summary_of_many_errors_keeps_its_shape_and_bound(worker_env):
    app = worker_env["app"]
    results = [
        {"updated": 1, "projects": 1, "errors": [f"project {i}: " + "e" * 580]} for i in range(1000)
    ]
    sent = app.send_task("cachework.sync_cache_summary", args=[results])
    summary = sent.get(timeout=60, interval=0.05)
    assert set(summary) == {"updated", "projects", "errors"}
    assert summary["updated"] == 1000 and summary["projects"] == 1000
    kept = summary["errors"][:-1]
    assert summary["errors"][-1] == f"... {1000 - len(kept)} more errors left out"
    assert kept == [r["errors"][0] for r in results[: len(kept)]]
    assert len(kept) > 300
    assert stored_size(worker_env, sent.id) < STORED_MAX
    assert sent.args is None or len(json.dumps(sent.args)) < STORED_ARGUMENTS_MAX


def test_normal_results_and_their_stored_arguments_are_unchanged(worker_env):
    app = worker_env["app"]
    sent = app.send_task("cachework.sync_cache", kwargs={"app_name": "inventory"})
    assert sent.get(timeout=60, interval=0.05) == {
        "updated": 2 * PROJECTS,
        "projects": PROJECTS,
        "errors": [],
    }
    kwargs = {"table": "categories", "keys": [1, 2]}
    sent = app.send_task("cachework.process_invalidation", kwargs=kwargs)
    assert set(sent.get(timeout=60, interval=0.05)) == {"event_id", "rebuilt"}
    assert (sent.args, sent.kwargs) == ([], kwargs)  # small: stored as sent


def test_a_large_valid_argument_is_stored_cut_and_the_task_gets_it_whole(worker_env):
    """process_invalidation's keys are bounded by CACHEWORK_INVALIDATION_MAX_KEYS, not by
    the argument limit: 10,000 keys run; their stored copy is cut."""
    app = worker_env["app"]
    keys = list(range(100_000, 110_000))
    sent = app.send_task(
        "cachework.process_invalidation", kwargs={"table": "categories", "keys": keys}
    )
    assert set(sent.get(timeout=60, interval=0.05)) == {"event_id", "rebuilt"}
    assert "characters cut" in sent.kwargs["keys"] and sent.kwargs["table"] == "categories"
    assert stored_size(worker_env, sent.id) < 20_000
