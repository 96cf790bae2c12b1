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
    assert node.stop() == 0  # a warm shutdown that ends by itself, not by SIGKILL


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
    from cachework.worker import create_app
    from tests.conftest import settings_of

    app = create_app(settings_of(make_env(tmp_path, database_url=sqlite_url, broker_url=redis_url)))
    try:
        inprocess_worker(app)
        answer = app.send_task("cachework.ping").get(timeout=20, interval=0.05)
        assert answer["dialect"] == "sqlite"
    finally:
        app.runtime.close()
        app.close()


def test_beat_sends_its_scheduled_task_through_the_broker(tmp_path, redis_url):
    """`celery -A cachework.worker beat` starts (its data dir does not exist yet) and enqueues the
    cache sync, routed to the `cache` queue, when CACHEWORK_SYNC_SCHEDULE says so."""
    import json
    import subprocess
    import sys
    import time

    import redis

    from cachework.worker.spawn import stop_process_group

    env = make_env(tmp_path, broker_url=redis_url, sync_schedule="1")
    assert not (tmp_path / "cachework").exists()
    with open(tmp_path / "beat.log", "wb") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "cachework.worker",
                "beat",
                "--max-interval",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while client.llen("cache") == 0 and beat.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        raw = client.lindex("cache", 0)
        assert raw is not None, (tmp_path / "beat.log").read_text(errors="replace")[-2000:]
        assert json.loads(raw)["headers"]["task"] == "cachework.sync_cache"
        assert client.llen("versions") == 0  # the import schedule is off
    finally:
        client.close()
        stop_process_group(beat, timeout=10)


def test_importing_the_worker_maps_no_model_and_leaves_versioning_off():
    """Continuum is set up by `bootstrap()` only, never as a side effect of an import."""
    import subprocess
    import sys

    code = (
        "import sys, worker, cachework.worker.cli, celeryconfig, tasks\n"
        "from importers import bootstrap\n"
        "print(bootstrap.continuum_enabled(), 'demo.models' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "False"], done.stderr
