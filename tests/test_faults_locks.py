"""Fault rows of issue 18 for the rebuild locks (`make faults`, marker `faults`).

- A paused rebuild holder: real prefork workers (Redis broker, locks and results; the
  run's PostgreSQL database). The `recorder` plugin reads the prices half-way through its
  rebuild; the child is SIGSTOPped right after that read for longer than the lock's TTL,
  the prices change, a second rebuild runs to completion, then the child gets SIGCONT.
  Stale: the item does not equal the prices after the last change once both are done.
- Database locks (CACHEWORK_REDIS_URL=off) with a worker clock 120 s ahead: two processes
  rebuild one scope, one of them with `time.time` shifted; the plugin counts how many
  rebuilds of the scope run at once (a Redis counter). Partial: two ran at once; stale:
  the item does not equal the data after the last change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.items import store
from demo.seed import project_uuid
from tests.fault_helpers import ROOT, TABLE
from tests.project_cache_helpers import HOLD_KEY, price_total, read_key, started_key

pytestmark = pytest.mark.faults

TTL_MS = 2000


@pytest.fixture(scope="module")
def setting(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    from tests.conftest import make_env  # here: a subprocess importing this module must not
    from tests.test_faults import Node, _fresh_schema

    folder = tmp_path_factory.mktemp("faults-locks")
    engine = _fresh_schema(pg_server_url)
    url = redis_server_url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = make_env(
        folder,
        database_url=pg_server_url,
        broker_url=url,
        result_backend=url,
        redis_url=url,
        models="demo.models,tests.project_cache_helpers",
        cache_lock_ttl_ms=str(TTL_MS),
        broker_visibility_timeout="30",
    )
    nodes = Node(env, folder)
    try:
        yield {"engine": engine, "redis": client, "url": url, "nodes": nodes, "db": pg_server_url}
    finally:
        nodes.close()
        client.flushdb()
        client.close()
        engine.dispose()


def _bump_prices(engine: sa.Engine, project: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE products SET price = price + 1 WHERE project_uuid = :p"), {"p": project}
        )


def _current(engine: sa.Engine, app: str, project: str) -> bool:
    with sa.orm.Session(engine) as session:
        item = store.get_item(session, app, "total", project=project)
        return item is not None and item.data == {"sum": price_total(session, project)}


def _popped(client: redis.Redis, key: str, timeout: float = 30) -> int:
    popped = client.blpop([key], timeout=timeout)
    assert popped is not None, f"nothing on {key} within {timeout} s"
    return int(popped[1])


def test_a_paused_rebuild_holder_never_writes_over_newer_data(setting):
    """After SIGCONT the holder's renewer (which then finds the lock gone: the lost flag)
    and its write (the fencing token, checked in the write's transaction) race; either
    stops it, the test prints which did (tests/test_fencing.py forces the write to win)."""
    engine, client, nodes = setting["engine"], setting["redis"], setting["nodes"]
    row = TABLE.row("paused rebuild holder (SIGSTOP past the lock TTL)")
    nodes.start(concurrency=2)
    project = project_uuid(0)
    for _ in range(4):
        row.tries += 1
        client.delete(started_key(project), read_key(project))
        client.set(HOLD_KEY, "3")  # reads at 1.5 s, writes at 3 s
        first = nodes.app.send_task(
            "cachework.sync_cache", kwargs={"project": project, "app_name": "recorder"}
        )
        pid = _popped(client, read_key(project))
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(TTL_MS / 1000 + 0.5)  # its lock runs out: the renewer is stopped too
            _bump_prices(engine, project)
            client.set(HOLD_KEY, "0.2")
            second = nodes.app.send_task(
                "cachework.sync_cache", kwargs={"project": project, "app_name": "recorder"}
            )
            second.get(timeout=60, interval=0.1)
            row.mid_run += 1
            if not _current(engine, "recorder", project):
                row.notes.append("the second rebuild did not write the new data")
        finally:
            os.kill(pid, signal.SIGCONT)
        try:  # a LockLostError is retried by the task: it ends with the retry's result
            first.get(timeout=60, interval=0.1)
        except Exception as exc:  # the item decides
            row.notes.append(type(exc).__name__)
        if _current(engine, "recorder", project):
            row.completed += 1
        else:
            row.stale += 1
    logs = "".join(p.read_text() for p in nodes.folder.glob("worker-*.log"))
    print(  # which check stopped the resumed holders (run with -s to see)
        f"fenced: {logs.count('was taken over (fencing token')}, "
        f"lost flag: {logs.count('expired before commit')}"
    )
    assert row.lost == 0 and row.stale == 0 and row.partial == 0, row


# --- database locks, one worker's clock 120 s ahead ---------------------------------------

APP = "overlap"
ACTIVE, OVERLAPS = "overlap:active", "overlap:overlaps"


class OverlapPlugin:
    """Item `total` = the project's price sum, read after half of `hold`; counts the
    rebuilds of the scope running at once in Redis."""

    app_name = APP
    item_names = ("total",)

    def __init__(self, redis_url: str, hold: float) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.hold = hold

    def update_cache(self, writer, session, project=None, name=None) -> None:
        if self.client.incr(ACTIVE) > 1:
            self.client.incr(OVERLAPS)
        try:
            self.client.rpush(started_key(f"{APP}:{project}"), os.getpid())
            time.sleep(self.hold / 2)
            total = price_total(session, project)
            time.sleep(self.hold / 2)
        finally:
            self.client.decr(ACTIVE)
        writer.set_item("total", {"sum": total})


def skewed_rebuild(database_url: str, redis_url: str, project: str, hold: float) -> None:
    """A process's rebuild of one scope with database locks (what a worker does with
    CACHEWORK_REDIS_URL=off), its `time.time` shifted by CLOCK_AHEAD seconds."""
    ahead = float(os.environ.get("CLOCK_AHEAD", "0"))
    if ahead:
        real = time.time
        time.time = lambda: real() + ahead
    from cachework.cache.items.locks import lock_backend
    from cachework.cache.items.sync import rebuild_scope
    from cachework.database import Database

    database = Database(database_url)
    try:
        locks = lock_backend(database.engine, None, TTL_MS)
        result = rebuild_scope(database.session, locks, OverlapPlugin(redis_url, hold), project)
        print(json.dumps({"updated": result.updated, "deferred": result.deferred}))
    finally:
        database.dispose()


def _start(setting: dict, project: str, hold: float, ahead: int) -> subprocess.Popen:
    code = (
        "from tests.test_faults_locks import skewed_rebuild; "
        f"skewed_rebuild({setting['db']!r}, {setting['url']!r}, {project!r}, {hold})"
    )
    env = {**os.environ, "CLOCK_AHEAD": str(ahead)}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("skewed", ["second", "first"])
def test_database_locks_with_a_worker_clock_ahead_never_overlap(setting, skewed):
    """The holder (hold 3 s, TTL 2 s, renewed) has read the prices when the data changes
    and the other process asks for the same scope; the skewed clock is the requester's
    (it used to take the lock at once) or the holder's."""
    engine, client = setting["engine"], setting["redis"]
    row = TABLE.row("database locks with a worker clock 120 s ahead")
    project = project_uuid(1)
    started = started_key(f"{APP}:{project}")
    for _ in range(2):
        row.tries += 1
        client.delete(ACTIVE, OVERLAPS, started)
        holder = _start(setting, project, 3.0, 120 if skewed == "first" else 0)
        requester = None
        try:
            _popped(client, started)
            time.sleep(1.6)  # the holder has read the prices
            _bump_prices(engine, project)
            requester = _start(setting, project, 0.4, 120 if skewed == "second" else 0)
            outputs = [p.communicate(timeout=60)[0] for p in (holder, requester)]
        finally:
            for process in (holder, requester):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait(10)
        codes = [p.returncode for p in (holder, requester)]
        overlaps = int(client.get(OVERLAPS) or 0)
        row.partial += overlaps > 0
        current = _current(engine, APP, project)
        row.stale += not current
        row.completed += codes == [0, 0] and current and not overlaps
        if codes != [0, 0]:
            row.notes.append(f"exit codes {codes}: {outputs}")
    assert row.lost == 0 and row.stale == 0 and row.partial == 0, row
