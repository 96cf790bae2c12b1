"""`enable(Session)` under a real pre-forking server: gunicorn with `--preload` imports
the app (and runs `enable()`) once in its main process, then forks its workers. Each
worker must have a runtime of its own: its commits are read back at once in it, and its
listener brings other workers' commits (issue 22, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from cachework.worker.spawn import stop_process_group
from demo.models import Category
from tests.conftest import make_env
from tests.invalidation_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2


def _call(port: int, method: str, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_gunicorn_preloaded_workers_each_run_their_own_runtime(pg_database, redis_url, tmp_path):
    with pg_database.session() as session:
        session.add(Category(id=1, code="c1", name="n1"))
    env = make_env(tmp_path, database_url=pg_database.url, redis_url=redis_url)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "-w", str(WORKERS), "-b",
         f"127.0.0.1:{port}", "tests.enable_wsgi_app:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                first = _call(port, "GET", "/name")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.2)
        assert first["pid"] != first["main"] and first["listening"]
        seen_pids = set()
        for i in range(20):
            wrote = _call(port, "POST", f"/rename/r{i}")
            assert wrote["name"] == f"r{i}"  # read at once in the worker that committed
            seen_pids.add(wrote["pid"])
            # Every worker has it within a bound: its own listener (forked, then started).
            # Each GET holds its sync worker 0.2 s, so WORKERS of them at once reach all.
            fresh: set[int] = set()
            deadline = time.monotonic() + 10
            while len(fresh) < WORKERS:
                assert time.monotonic() < deadline, f"a worker stayed stale after r{i}"
                with ThreadPoolExecutor(WORKERS) as pool:
                    answers = list(pool.map(lambda _: _call(port, "GET", "/name"), range(WORKERS)))
                assert all(answer["listening"] for answer in answers)
                fresh |= {a["pid"] for a in answers if a["name"] == f"r{i}"}
        assert len(seen_pids) >= 1
    finally:
        stop_process_group(server)
        log.close()
    text = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in text and "starting the runtime" not in text, text[-3000:]
    with pg_database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM categories WHERE id = 1")).scalar() == "r19"
