"""Every Celery pool (prefork, threads, solo, gevent, eventlet) with a real worker node,
PostgreSQL, a Redis broker and a Redis of the test's own for the invalidation stream (so
it can be stopped).

For each pool: a lookup works; an invalidation published from outside is applied by the
node's listener (not only by the next task's catch-up) and the next lookup reads the new
value; outbox rows committed outside (a web app without a relay) and a tracked write made
inside a task are relayed to the log (the outbox empties within a bound) and read back;
readiness is ok, and says so when the listener is cut off. With threads, gevent and
eventlet: tasks run side by side, and one holding a database session open is not
counted against the others ("left N database session(s) open").
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import RedisLog, publish
from cachework.cache.invalidation.events import id_key
from cachework.settings import Settings, load_settings
from cachework.worker.spawn import WorkerProcess
from demo.models import Category
from tests.conftest import MODELS, make_env
from tests.invalidation_helpers import OwnRedis, wait_until

pytestmark = pytest.mark.topology

# prefork-spawn: children started as fresh interpreters (billiard's default on macOS);
# gevent-cli: `cachework worker -P gevent` (it hands over to a fresh `celery` command).
POOLS = ("prefork", "prefork-spawn", "threads", "solo", "gevent", "gevent-cli", "eventlet")
CONCURRENCY = {"threads": 16, "solo": 1, "gevent": 16, "gevent-cli": 16, "eventlet": 16}  # or 2
CACHEWORK = [
    sys.executable,
    "-c",
    "from cachework.worker.cli import main; main(prog_name='cachework')",
]
PROCESSES = {"prefork": 2, "prefork-spawn": 2}  # processes running tasks (else 1: its own)
RELAY_BOUND = 10.0  # seconds for a committed outbox row to reach the log
SESSION_LEAK = "database session(s) open"


@dataclass
class Node:
    pool: str
    app: object
    worker: object
    engine: sa.Engine
    log: RedisLog
    stream: OwnRedis
    settings: Settings
    logfile: Path

    def call(self, task: str, **kwargs) -> object:
        return self.app.send_task(task, kwargs=kwargs).get(timeout=30, interval=0.01)

    def lookup(self, key: int) -> str:
        return self.call("cachework.lookup", table="categories", key=key)["name"]

    def statuses(self, rounds: int = 40) -> dict[int, dict]:
        """cache_status of every process running tasks (bursts until all answered)."""
        want = PROCESSES.get(self.pool, 1)
        seen: dict[int, dict] = {}
        for _ in range(rounds):
            pending = [self.app.send_task("cachework.cache_status") for _ in range(4 * want)]
            for sent in pending:
                status = sent.get(timeout=30, interval=0.01)
                seen[status["pid"]] = status
            if len(seen) >= want:
                return seen
        raise AssertionError(f"{len(seen)} of {want} processes answered: {sorted(seen)}")

    def outbox(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM invalidation_outbox")).scalar()

    def write(self, key: int, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE categories SET name = :n WHERE id = :k"), {"n": name, "k": key}
            )

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


class CliWorker(WorkerProcess):
    """A node started with `cachework worker` instead of `celery -A cachework.worker worker`."""

    def start(self) -> CliWorker:
        cmd = [
            *CACHEWORK, "worker", "-P", self.pool, "-c", str(self.concurrency),
            "-n", self.name, "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        self._log = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self


@pytest.fixture
def node(request, pg_url, redis_url, tmp_path) -> Iterator[Node]:
    from cachework.worker import create_app
    from cachework.worker.schema import create_tables

    pool = request.param
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        session.add_all(Category(id=i, code=f"c{i}", name=f"cat{i}-v0") for i in (1, 2, 3))
    stream = OwnRedis(tmp_path / "stream").start()
    client = redis.Redis.from_url(stream.url, socket_connect_timeout=1, socket_timeout=5)
    env = make_env(
        tmp_path,
        database_url=pg_url,
        broker_url=redis_url,
        result_backend=redis_url,
        redis_url=stream.url,
        models="demo.models,tests.pools_helpers",
        listener_stale_after="1.5",
    )
    app = create_app(load_settings(env))
    worker = (CliWorker if pool.endswith("-cli") else WorkerProcess)(
        env,
        concurrency=CONCURRENCY.get(pool, 2),
        pool=pool.split("-")[0],
        logfile=tmp_path / "worker.log",
        extra_args=("--pool-start-method", "spawn") if pool.endswith("-spawn") else (),
    )
    try:
        worker.start().wait_ready(app, timeout=60)
        yield Node(
            pool,
            app,
            worker,
            engine,
            RedisLog(client),
            stream,
            load_settings(env),
            tmp_path / "worker.log",
        )
    finally:
        worker.stop()
        app.close()
        client.close()
        stream.stop()
        engine.dispose()


@pytest.mark.parametrize("node", POOLS, indirect=True)
def test_every_pool_listens_relays_and_reports_its_listener(node):
    from cachework.worker.health import readiness, workers_problems

    if CONCURRENCY.get(node.pool, 2) > 1 and node.pool not in PROCESSES:
        connection_each(node)

    # A lookup works, in every process that runs tasks.
    assert node.lookup(1) == "cat1-v0"
    before = node.statuses()
    assert all(s["listener"]["connected"] for s in before.values()), before

    # Published from outside: the listener applies it (the task-start catch-up has nothing
    # left to do), and the next lookup reads the new value.
    node.write(1, "cat1-v1")
    event_id = publish("categories", [1], log=node.log)
    time.sleep(0.5)
    after = node.statuses()
    for pid, status in after.items():
        assert id_key(status["cursor"]) >= id_key(event_id), (node.pool, pid, status)
        catch_ups = before.get(pid, {}).get("listener", {}).get("catch_ups", 0)
        assert status["listener"]["catch_ups"] == catch_ups, (node.pool, pid, status)
    assert {node.lookup(1) for _ in range(4)} == {"cat1-v1"}

    # Committed into the outbox outside (a web app without a relay): the node relays it.
    head = node.log.state().head
    with sa.orm.Session(node.engine) as session, session.begin():
        session.execute(sa.text("UPDATE categories SET name = 'cat2-v1' WHERE id = 2"))
        publish("categories", [2], session=session)
    assert wait_until(lambda: node.outbox() == 0, timeout=RELAY_BOUND), (
        f"{node.pool}: outbox rows not relayed within {RELAY_BOUND}s"
    )
    assert id_key(node.log.state().head) > id_key(head)
    assert node.lookup(2) == "cat2-v1"

    # A tracked write inside a task: read back at once there, relayed, read everywhere.
    head = node.log.state().head
    done = node.call("cachework_test.rename", key=3, name="cat3-v1")
    assert done["read"] == "cat3-v1"
    assert wait_until(lambda: node.outbox() == 0, timeout=RELAY_BOUND), node.pool
    assert id_key(node.log.state().head) > id_key(head)
    assert {node.lookup(3) for _ in range(4)} == {"cat3-v1"}

    if node.pool == "gevent-cli":  # the command's own process runs the tasks, patched
        assert set(node.statuses()) == {node.worker.proc.pid}
        assert "monkey-patched" not in node.log_text()
    if CONCURRENCY.get(node.pool, 2) > 1 and node.pool not in PROCESSES:
        side_by_side(node)

    # Readiness: ok; then the invalidation Redis goes away and the listener's cut-off
    # shows within the stale bound (1.5 s) plus a sample (1 s).
    assert readiness(node.settings, node.app, timeout=5) == []
    node.stream.stop()
    problems = wait_until(lambda: workers_problems(node.app, timeout=2), timeout=15, every=0.2)
    assert problems and all("invalidation listener cut off" in p for p in problems), problems
    assert SESSION_LEAK not in node.log_text()


def side_by_side(node: Node) -> None:
    """Tasks at once in one process, each holding its session open 0.4 s: each finishes
    while others hold theirs, and none is reported as leaving a session open."""
    sent = [
        node.app.send_task("cachework_test.rename", kwargs={"key": k, "name": f"p{k}", "hold": 0.4})
        for k in (1, 2, 3, 1, 2, 3)
    ]
    results = [s.get(timeout=30, interval=0.01) for s in sent]
    spans = sorted((r["started"], r["ended"]) for r in results)
    overlaps = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    assert overlaps >= 2, (node.pool, spans)  # they ran side by side
    assert len({r["thread"] for r in results}) > 1, results
    time.sleep(0.2)  # the last task's postrun line, if any, is in the log
    text = node.log_text()
    assert "cachework_test.rename" in text  # the log is the worker's, at INFO
    leaks = [line for line in text.splitlines() if SESSION_LEAK in line]
    assert not leaks, (node.pool, leaks)


def test_a_pool_cachework_cannot_run_in_is_refused_at_start_up_with_one_line(tmp_path):
    """`-P custom` (an out-of-tree pool): exit status 2 and one line naming it."""
    env = make_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    env["CELERY_CUSTOM_WORKER_POOL"] = "celery.concurrency.base:BasePool"
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cachework.worker", "worker", "-P", "custom"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: Celery pool 'celery.concurrency.base:BasePool' is not supported by "
        "cachework (its runtime could not be started where the tasks run): use one of "
        "prefork, solo, threads, gevent, eventlet"
    ], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def connection_each(node: Node) -> None:
    """As many tasks as the node's concurrency, each holding a database connection 1.5 s:
    they hold them at the same time (a process's usual pool: 10 at most)."""
    count = CONCURRENCY[node.pool]
    hold = {"seconds": 1.5}
    sent = [node.app.send_task("cachework_test.hold", kwargs=hold) for _ in range(count)]
    spans = [s.get(timeout=60, interval=0.01) for s in sent]
    edges = sorted([(start, 1) for start, _end in spans] + [(end, -1) for _start, end in spans])
    held = at_once = 0
    for _at, step in edges:
        held += step
        at_once = max(at_once, held)
    assert at_once >= count - 2, (node.pool, at_once, count)
