"""Celery pools without a worker: which pools run where (worker/pools.py), and the
database session counts a task's end checks, per thread (cachework/database.py,
worker/celery_app.py). Real workers of every pool: tests/test_topology_pools.py."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest
from celery.concurrency import prefork, solo, thread

from cachework.database import Database
from cachework.errors import ConfigError
from cachework.worker import celery_app, pools


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("prefork", "prefork"),
        ("processes", "prefork"),
        ("threads", "threads"),
        ("solo", "solo"),
        ("gevent", "gevent"),
        ("eventlet", "eventlet"),
        (prefork.TaskPool, "prefork"),
        (solo.TaskPool, "solo"),
        (thread.TaskPool, "threads"),
        ("celery.concurrency.gevent:TaskPool", "gevent"),
        (type("MyThreads", (thread.TaskPool,), {}), "threads"),
        ("mypool:Pool", "mypool:Pool"),
    ],
)
def test_pool_name_from_alias_path_or_class(given, name):
    assert pools.pool_name(given) == name


def test_in_process_pools_start_the_runtime_in_the_worker_process():
    assert [p for p in pools.SUPPORTED if pools.runs_tasks_in_process(p)] == [
        "solo",
        "threads",
        "gevent",
        "eventlet",
    ]
    assert celery_app._runs_tasks_in_process(solo.TaskPool(limit=1))
    assert not celery_app._runs_tasks_in_process(None)


def test_every_celery_pool_is_accepted_when_it_can_run():
    for name in ("prefork", "threads", "solo"):
        pools.check_pool(name)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("custom", "Celery pool 'custom' is not supported by cachework"),
        ("mypool:Pool", "use one of prefork, solo, threads, gevent, eventlet"),
        # This process is not monkey-patched: a green pool chosen by configuration alone.
        ("gevent", "run `celery -A cachework.worker worker -P gevent`"),
        ("eventlet", "needs the process monkey-patched"),
    ],
)
def test_a_pool_cachework_cannot_run_in_is_one_line(name, said):
    with pytest.raises(ConfigError) as caught:
        pools.check_pool(name)
    message = str(caught.value)
    assert said in message and "\n" not in message, message


def test_only_a_spawned_child_of_a_cachework_app_builds_its_own_runtime(monkeypatch):
    from celery import Celery

    monkeypatch.delenv("FORKED_BY_MULTIPROCESSING", raising=False)
    assert pools.spawned_child_runtime(Celery("cachework"), "n") is None  # forked
    monkeypatch.setenv("FORKED_BY_MULTIPROCESSING", "1")
    assert pools.spawned_child_runtime(Celery("someone-else"), "n") is None
    assert pools.spawned_child_runtime(None, "n") is None
    has_one = Celery("cachework")
    has_one.runtime = object()
    assert pools.spawned_child_runtime(has_one, "n") is None


def test_under_a_green_pool_psycopg_waits_through_the_patched_select(monkeypatch):
    from psycopg import waiting

    monkeypatch.setattr(waiting, "wait", waiting.wait_c)
    pools.cooperative_database_waits("threads")
    assert waiting.wait is waiting.wait_c  # real threads: the C wait is right
    pools.cooperative_database_waits("eventlet")
    assert waiting.wait is waiting.wait_select


def test_open_sessions_are_counted_per_thread_and_in_all(sqlite_url):
    database = Database(sqlite_url)
    opened, release = threading.Event(), threading.Event()

    def hold() -> None:
        with database.session():
            opened.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    try:
        assert opened.wait(10)
        assert database.open_sessions == 1  # the process: one open
        assert database.open_sessions_here == 0  # this thread: none
        with database.session():
            assert database.open_sessions_here == 1
            assert database.open_sessions == 2
        assert database.open_sessions_here == 0
    finally:
        release.set()
        other.join(10)
        database.dispose()
    assert database.open_sessions == 0


def _task(database: Database) -> SimpleNamespace:
    runtime = SimpleNamespace(database=database, catch_up=lambda: 0)
    return SimpleNamespace(name="t", app=SimpleNamespace(runtime=runtime))


def test_a_task_ending_beside_another_holding_a_session_is_not_blamed(sqlite_url, caplog):
    """`-P threads`: a task ends while another task's thread holds its session open."""
    database = Database(sqlite_url)
    task = _task(database)
    opened, release = threading.Event(), threading.Event()

    def other_task() -> None:
        celery_app._task_prerun(task=task)
        with database.session():
            opened.set()
            release.wait(10)
        celery_app._task_postrun(task=task)

    other = threading.Thread(target=other_task)
    other.start()
    caplog.set_level(logging.ERROR, logger="cachework.worker.lifecycle")
    try:
        assert opened.wait(10)
        celery_app._task_prerun(task=task)
        with database.session():
            pass
        celery_app._task_postrun(task=task)
    finally:
        release.set()
        other.join(10)
    assert "session(s) open" not in caplog.text

    # A task that does leave one open is still named, with its own count only.
    session = database.session()
    celery_app._task_prerun(task=task)
    session.__enter__()
    celery_app._task_postrun(task=task)
    session.__exit__(None, None, None)
    database.dispose()
    assert "task t left 1 database session(s) open" in caplog.text


@pytest.mark.parametrize(
    ("args", "pool"),
    [
        (["-P", "gevent", "-c", "4"], "gevent"),
        (["-c", "4", "-Peventlet"], "eventlet"),
        (["--pool", "threads"], "threads"),
        (["--pool=solo"], "solo"),
        (["-Q", "cache", "-c", "2"], None),
        (["-P"], None),
    ],
)
def test_the_pool_a_worker_command_line_names(args, pool):
    assert pools.pool_option(args) == pool


def test_an_in_process_pool_keeps_a_connection_per_task_running_at_once(tmp_path):
    from cachework.worker.runtime import Runtime
    from tests.conftest import make_env, settings_of

    url = "postgresql+psycopg://app@127.0.0.1:1/app"  # never connected to here
    settings = settings_of(make_env(tmp_path, database_url=url))
    sized = Runtime(settings)
    pools.size_database_pool(sized, "gevent", 40)
    assert sized.database.engine.pool.size() == 40 + pools.SPARE_CONNECTIONS
    for name, concurrency in (("prefork", 40), ("threads", 2), ("threads", "auto")):
        usual = Runtime(settings)
        pools.size_database_pool(usual, name, concurrency)
        assert usual.database.engine.pool.size() == 5, (name, concurrency)
    handed = Runtime(settings, database=Database(url))
    pools.size_database_pool(handed, "threads", 40)
    assert handed.database.engine.pool.size() == 5
    for runtime in (sized, usual, handed):
        runtime.database.dispose()
