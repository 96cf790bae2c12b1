"""A web app's own process (a plain script, no Celery) beside real prefork workers: it
starts the runtime with one call, reads a cached table, publishes an invalidation in its
own transaction through the outbox, and sees a worker's invalidation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import make_env

ROOT = Path(__file__).resolve().parent.parent


class WebApp:
    """A web-app script (tests/<script>) driven one JSON line at a time."""

    def __init__(self, env: dict[str, str], script: str = "web_app.py") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / script)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"web app died: {self.proc.stderr.read()[-2000:]}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


def _every_child_reads(app, expect: str, timeout: float = 20.0) -> set[int]:
    """Burst lookups until both children of the node answered `expect` (bounded)."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        pending = [
            app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1})
            for _ in range(6)
        ]
        statuses = [app.send_task("cachework.cache_status") for _ in range(6)]
        names = {p.get(timeout=20, interval=0.01)["name"] for p in pending}
        pids = {s.get(timeout=20, interval=0.01)["pid"] for s in statuses}
        if names == {expect}:
            seen |= pids
            if len(seen) >= 2:
                return seen
        time.sleep(0.05)
    raise AssertionError(f"not every child reads {expect!r} (children seen: {seen})")


def test_a_web_app_process_without_celery_shares_invalidations_with_the_workers(
    tmp_path, pg_database, redis_url, worker_process
):
    from demo.seed import seed

    with pg_database.session() as session:
        seed(session, projects=1, products=4)
    url = pg_database.engine.url.render_as_string(hide_password=False)
    env = make_env(tmp_path, database_url=url, broker_url=redis_url, result_backend=redis_url)
    _node, app = worker_process(env, concurrency=2)
    assert _every_child_reads(app, "Tools")

    web = WebApp(env)
    try:
        started = web.answer()
        assert started == {"step": "started", "name": "Tools", "listening": True}

        # The web app's own write and its event, one commit; the workers relay the outbox
        # row to the log and every process (the web app included) applies it.
        assert web.ask("write FromWeb") == {"step": "written"}
        assert _every_child_reads(app, "FromWeb")
        assert web.ask("until FromWeb") == {"step": "until", "name": "FromWeb"}

        # A change announced by a worker task reaches the web app: its read barrier
        # returns once the event is applied, and the read that follows is fresh.
        with pg_database.engine.begin() as conn:
            conn.execute(sa.text("UPDATE categories SET name = 'FromWorker' WHERE id = 1"))
        sent = app.send_task("cachework.process_invalidation", kwargs={"table": "categories"})
        event_id = sent.get(timeout=30, interval=0.05)["event_id"]
        assert web.ask(f"barrier {event_id}") == {"step": "barrier", "name": "FromWorker"}

        modules = web.ask("modules")
        assert modules == {"step": "modules", "loaded": [], "worker_app": False}
    finally:
        web.close()
    assert web.proc.returncode == 0
