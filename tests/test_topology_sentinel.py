"""Redis Sentinel (make topology): a private group of 1 master, 1 replica and 3 sentinels,
with the broker, the result backend and CACHEWORK_REDIS_URL all on sentinel:// URLs and 2
real prefork worker nodes. A forced failover (SENTINEL FAILOVER) and a master kill
(SIGKILL) while a writer renames a category and publishes its invalidation in a loop and
readers send lookups: every lookup sent after a publish returned reads that version or a
newer one (0 stale), every lookup sent gets its answer but for at most the requests in
flight when the old master died or was demoted (Redis's asynchronous replication, see
the test), and the same worker processes serve afterwards (no restart).

`failover-fresh`: after SENTINEL FAILOVER the old master keeps serving the connections
opened before the switch until Sentinel demotes it, about 8 s later, while a publisher
that opens a new connection writes to the new master. A task-start catch-up asks the
sentinels where the master is first (cachework/redis_client.py `follow_master`), so it reads
the writer's log: 0 stale here too (1,265 stale reads in one run without that question).

An entry the killed master acknowledged but never replicated is lost with it; the
promoted replica has another run id, so the log's epoch changes and every reader drops
its tables instead of missing it (cache/invalidation/redis_log.py)."""

from __future__ import annotations

import gc
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import RedisLog, publish
from cachework.errors import TransientError, is_transient
from cachework.redis_client import client_from_url
from cachework.settings import load_settings
from tests.conftest import MODELS, empty_schema, make_env, started, unavailable
from tests.invalidation_helpers import wait_until
from tests.sentinel_helpers import MASTER_NAME, SentinelGroup

# A failover breaks connections that Celery and kombu then drop without closing (the
# result backend's, the producer pool's); their sockets warn when collected. The nodes
# fixture collects them on purpose at its end; nothing else here is expected to leak.
pytestmark = [pytest.mark.topology, pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")]


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> Iterator[SentinelGroup]:
    service = "Redis Sentinel (redis-server --sentinel)"
    with started(SentinelGroup(tmp_path_factory.mktemp("sentinel")), service) as group:
        yield group


@dataclass
class Nodes:
    env: dict[str, str]
    app: object
    engine: sa.Engine
    log: RedisLog
    workers: list = field(default_factory=list)


@pytest.fixture(scope="module")
def nodes(group, pg_server_url, tmp_path_factory) -> Iterator[Nodes]:
    from cachework.worker import create_app
    from cachework.worker.schema import create_tables
    from cachework.worker.spawn import WorkerProcess
    from demo.seed import seed

    folder = tmp_path_factory.mktemp("sentinel-nodes")
    empty_schema(pg_server_url)
    engine = sa.create_engine(pg_server_url, poolclass=sa.pool.NullPool)
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=1, products=5)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE categories SET name = 'cat' || id || '-v0'"))
    env = make_env(
        folder,
        database_url=pg_server_url,
        broker_url=group.url(1),
        result_backend=group.url(2),
        redis_url=group.url(0),
        redis_master_name=MASTER_NAME,
        listener_stale_after="2",
        # A message taken by a worker whose connection broke comes back within seconds.
        broker_visibility_timeout="10",
        broker_restore_interval="1",
    )
    settings = load_settings(env)
    app = create_app(settings)
    log = RedisLog(client_from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=1))
    found = Nodes(env, app, engine, log)
    try:
        for i in range(2):
            worker = WorkerProcess(
                env, concurrency=2, name=f"sent{i}@127.0.0.1", logfile=folder / f"w{i}.log"
            ).start()
            found.workers.append(worker)
        for worker in found.workers:
            worker.wait_ready(app, timeout=90)
        yield found
    finally:
        for worker in found.workers:
            worker.stop(timeout=15)
        with warnings.catch_warnings():  # the failovers' dropped connections, see pytestmark
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # results dropped by the readers unsubscribe now, while the group runs
        _release_results(app)
        log.client.close()
        app.runtime.close()
        app.close()
        engine.dispose()


def _release_results(app) -> None:
    """Let go of the results still pending (a request lost in a failover never gets one)
    while the group still runs: Celery's AsyncResult.__del__ unsubscribes through the
    result backend, and once the group is stopped that retries 20 times and raises from
    the garbage collector, at the end of the session. Unsubscribed here, a result that is
    collected later has nothing to cancel."""
    for waiting in getattr(app.backend, "_pending_results", ()):
        waiting.clear()
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None:
        consumer.stop()
        consumer.subscribed_to.clear()


def _version_of(name: str) -> int:
    return int(name.rsplit("-v", 1)[1]) if "-v" in name else -1


@dataclass
class Outcome:
    tries: int = 0
    stale: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    refused: int = 0  # a send the client saw fail (a broker mid-failover): not lost
    publish_failures: int = 0
    # Results whose pub/sub notice never came: Celery's Redis result backend publishes it
    # on the master the worker reaches, while the client may still be subscribed on the
    # old master (Sentinel demotes it seconds after the switch). The result is stored.
    unnotified: int = 0
    # Running when its worker lost the broker: Celery cancels it and stores REVOKED
    # "terminated" (worker_cancel_long_running_tasks_on_connection_loss), and the broker
    # hands the unacknowledged message out again (the visibility timeout): it runs again.
    rerun: int = 0
    # Celery's get() itself failed on the result backend's broken connection (the client's
    # pub/sub was on the killed master); the result is read again from the backend.
    get_errors: int = 0


def _answer(app, sent, outcome: Outcome | None = None, timeout: float = 30.0) -> dict:
    """The task's final result: by Celery's get(), else (its notice missed, or a first
    run cancelled by a lost broker connection) read from the result backend until it
    succeeds, bounded."""
    from celery.exceptions import TaskRevokedError
    from celery.exceptions import TimeoutError as ResultTimeout

    seen = "unnotified"
    try:
        return sent.get(timeout=8, interval=0.02)
    except ResultTimeout:
        pass
    except TaskRevokedError as exc:
        if "terminated" not in str(exc):
            raise
        seen = "rerun"
    except (redis.ConnectionError, OSError):
        seen = "get_errors"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            meta = app.backend.get_task_meta(sent.id, cache=False)
        except (redis.ConnectionError, OSError):  # the client's own read, mid-failover
            seen = "get_errors"
            time.sleep(0.2)
            continue
        if meta.get("status") == "SUCCESS":
            if outcome is not None:
                setattr(outcome, seen, getattr(outcome, seen) + 1)
            return meta["result"]
        time.sleep(0.2)
    raise AssertionError(f"no result for {sent.id} in {timeout + 8:.0f}s ({seen})")


def _publish(log: RedisLog, url: str, fresh: bool) -> None:
    """Publish category 1's invalidation on the shared log, or (`fresh`) on a new
    connection, closed after."""
    if fresh:
        own = RedisLog(client_from_url(url, socket_timeout=2))
        try:
            publish("categories", [1], log=own)
        finally:
            own.client.close()
    else:
        publish("categories", [1], log=log)


def _write_and_publish(
    nodes: Nodes, url: str, fresh: bool, outcome: Outcome, published: list, stop: threading.Event
) -> None:
    """Rename category 1 and publish, in a loop; `published[0]` is the last version whose
    publish returned."""
    version = 1000 * int(time.time() % 1000)  # above every earlier test's versions
    while not stop.is_set():
        version += 1
        with nodes.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE categories SET name = :n WHERE id = 1"),
                {"n": f"cat1-v{version}"},
            )
        try:
            _publish(nodes.log, url, fresh)
            published[0] = version
        except Exception:  # mid-failover: the next publish covers this version
            outcome.publish_failures += 1
        stop.wait(0.02)


def _read_and_check(
    app, outcome: Outcome, published: list, stop: threading.Event, lock: threading.Lock
) -> None:
    """Look category 1 up, in a loop; an answer older than the version published before
    the lookup was sent is stale."""
    while not stop.is_set():
        floor = published[0]
        try:
            sent = app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1})
        except Exception:
            outcome.refused += 1
            stop.wait(0.1)
            continue
        try:
            name = _answer(app, sent, outcome)["name"]
        except Exception as exc:
            with lock:
                outcome.lost.append(f"{sent.id}: {type(exc).__name__}: {exc}"[:300])
            continue
        with lock:
            outcome.tries += 1
            if floor > 0 and _version_of(name) < floor:
                outcome.stale.append(f"{time.time():.3f} read {name} after v{floor}")


def _traffic(nodes: Nodes, fault, seconds_after: float = 4.0, fresh: bool = False) -> Outcome:
    """Writer + 2 readers around `fault()`, bounded in time; returns what the readers saw.
    `fresh`: the writer publishes on a new connection each time (as many web processes
    do), which reaches a promoted master while the workers' connections are still on
    the old one."""
    url = load_settings(nodes.env).redis_url
    outcome = Outcome()
    published = [-1]
    stop = threading.Event()
    lock = threading.Lock()
    writer = threading.Thread(
        target=_write_and_publish,
        args=(nodes, url, fresh, outcome, published, stop),
        name="sentinel-writer",
    )
    threads = [writer] + [
        threading.Thread(
            target=_read_and_check,
            args=(nodes.app, outcome, published, stop, lock),
            name=f"sentinel-reader-{i}",
        )
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        fault()
        time.sleep(seconds_after)
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
    return outcome


def _serves_after(nodes: Nodes, tag: str) -> None:
    """The same worker processes, alive; a rename and its invalidation reach every lookup."""
    for worker in nodes.workers:
        assert worker.proc is not None and worker.proc.poll() is None, worker._tail()
    with nodes.engine.begin() as conn:
        conn.execute(sa.text("UPDATE categories SET name = :n WHERE id = 2"), {"n": tag})
    publish("categories", [2], log=nodes.log)
    sent = [
        nodes.app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 2})
        for _ in range(16)
    ]
    assert {_answer(nodes.app, s)["name"] for s in sent} == {tag}

    # Every child's listener is back on the log (connected), without a restart.
    def listening() -> bool:
        statuses = {}
        for _ in range(6):
            for s in [nodes.app.send_task("cachework.cache_status") for _ in range(8)]:
                status = _answer(nodes.app, s)
                statuses[status["pid"]] = status
        return len(statuses) == 4 and all(s["listener"].get("connected") for s in statuses.values())

    wait_until(listening, timeout=30, every=0.5)


@pytest.mark.parametrize(
    "fault",
    [
        "failover",
        "master-kill",
        "failover-fresh",
    ],
)
def test_failover_under_traffic_gives_no_stale_and_no_lost_read(group, nodes, fault):
    pids = [w.proc.pid for w in nodes.workers]
    old = group.master_port()
    moved: list[int] = []

    def act() -> None:
        moved.append(group.kill_master() if fault == "master-kill" else group.failover())

    outcome = _traffic(nodes, act, fresh=fault.endswith("fresh"))
    print(f"{fault}: {outcome}")
    assert moved and moved[0] != old
    assert outcome.tries > 20, outcome
    assert outcome.stale == [], f"{len(outcome.stale)} stale: {outcome}"
    # Redis as a broker can lose a message (or its result) the old master acknowledged:
    # after a kill, what it had not replicated yet; after SENTINEL FAILOVER, what
    # connections opened before the switch wrote to it until Sentinel demoted it (~8 s
    # later) and it resynced as a replica. No more than the requests in flight at that
    # moment: one per reader. Every other request is answered, by the same workers.
    assert len(outcome.lost) <= 2, outcome
    assert [w.proc.pid for w in nodes.workers] == pids
    _serves_after(nodes, f"after-{fault}-{time.time():.0f}")


def test_readonly_error_is_transient(group):
    """A command on the replica (what a proxy still sending to a demoted master gets):
    ReadOnlyError, which `is_transient` says a retry cures, and which the invalidation
    log raises as its transient LogUnavailable."""
    replica = next(p for p in group.ports if p != group.master_port())
    client = redis.Redis(host="127.0.0.1", port=replica, socket_timeout=2)
    try:
        with pytest.raises(redis.exceptions.ReadOnlyError) as caught:
            client.set("cachework:probe", 1)
        assert is_transient(caught.value)
        with pytest.raises(TransientError):
            RedisLog(client, key="cachework:probe").append('{"v":1,"table":"t","keys":[1]}')
    finally:
        client.close()


def test_a_redis_broker_demoted_to_a_replica_does_not_end_the_worker(tmp_path):
    """What a proxy in front of Redis shows a worker during a failover: its broker
    connection lands on a server that is a replica now (REPLICAOF), whose READONLY and
    UNBLOCKED replies used to end the worker for good ("Unrecoverable error"). The worker
    stays up and, once the server is a master again, serves."""
    from cachework.worker import create_app
    from cachework.worker.spawn import WorkerProcess
    from tests.invalidation_helpers import OwnRedis

    try:
        broker = OwnRedis(tmp_path / "a").start()
        other = OwnRedis(tmp_path / "b").start()
    except Exception as exc:
        unavailable("Redis (redis-server)", exc)
    env = make_env(
        tmp_path,
        broker_url=broker.url,
        result_backend=broker.url.replace("/0", "/1"),
        redis_url="off",
        cached_tables="off",
        projects="off",
    )
    app = create_app(load_settings(env))
    worker = WorkerProcess(env, concurrency=1, logfile=tmp_path / "w.log").start()
    admin = redis.Redis(host="127.0.0.1", port=broker.port, socket_timeout=5)
    try:
        worker.wait_ready(app, timeout=90)
        admin.replicaof("127.0.0.1", other.port)
        time.sleep(4)
        assert worker.proc.poll() is None, worker._tail(40)
        admin.replicaof("NO", "ONE")
        status = app.send_task("cachework.cache_status").get(timeout=60, interval=0.05)
        assert status["pid"] > 0
        assert worker.proc.poll() is None, worker._tail(40)
        assert "Unrecoverable error" not in (tmp_path / "w.log").read_text(errors="replace")
    finally:
        worker.stop(timeout=10)
        admin.close()
        _release_results(app)
        app.close()
        broker.stop()
        other.stop()


def test_health_is_ok_through_the_sentinels(nodes):
    """`cachework health` (readiness: broker, database, Redis and its eviction policy, the
    workers) finds everything through the sentinels."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cachework.worker.cli import main; main()",
            "health",
            "--timeout",
            "5",
        ],
        env=nodes.env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok (readiness)"), proc.stderr[-2000:]
