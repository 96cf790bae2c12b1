"""The per-process runtime: nothing happens when it is built or imported, and a forked
child renews it (its own connections, Redis client and tables) without touching the
parent's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cachework.worker.runtime import Runtime
from tests.conftest import make_env, settings_of


def test_building_a_runtime_connects_to_nothing_and_creates_nothing(tmp_path):
    env = make_env(tmp_path, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    runtime = Runtime(settings_of(env))
    assert runtime.settings.redis_url == "redis://127.0.0.1:1/0"
    assert not (tmp_path / "cachework").exists()  # the SQLite folder is made on first use
    assert not runtime.listening
    runtime.close()
    assert not (tmp_path / "cachework").exists()


def test_importing_our_modules_reads_no_settings_and_creates_nothing(tmp_path):
    """Import everything a worker and a web app import, with a data dir that must not
    appear and a setting that would fail if it were read."""
    env = make_env(tmp_path, log_level="NOPE")  # reading the settings would raise
    code = (
        "import celeryconfig, worker, cachework.worker.routing, cachework.importers.bootstrap, "
        "cachework.worker.runtime, cache.jobs, cachework.worker.cli\n"
        "import sys; print('cachework.worker.celery_app' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]
    assert not (tmp_path / "cachework").exists()


def test_a_forked_child_renews_the_runtime_and_leaves_the_parents_alone(
    tmp_path, database, redis_url
):
    env = make_env(tmp_path, database_url=database.url, redis_url=redis_url)
    runtime = Runtime(settings_of(env), database=database)
    try:
        # Kept referenced here, so nothing of the child's can take their place in memory.
        registry, client, pool = runtime.registry, runtime.redis, database.engine.pool
        assert runtime.registry.table("categories").get(1) is None  # loads: a connection
        runtime.redis.ping()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave without running any test machinery
            try:
                child = {
                    "registry": runtime.registry is registry,
                    "redis": runtime.redis is client,
                    "pool": database.engine.pool is pool,
                    "loaded": runtime.registry.status()["categories"]["loaded"],
                }
                os.write(write, json.dumps(child).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
        assert child == {"registry": False, "redis": False, "pool": False, "loaded": False}
        # The parent still has its own, working.
        assert runtime.registry is registry and runtime.redis is client and client.ping()
        assert database.engine.pool is pool
        assert runtime.registry.status()["categories"]["loaded"] is True
    finally:
        runtime.close()
