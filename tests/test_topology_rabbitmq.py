"""RabbitMQ with classic and with quorum queues (CACHEWORK_QUEUE_TYPE), real prefork workers.

Each test gets a RabbitMQ vhost of its own on the local server (made and deleted with
rabbitmqctl) and a seeded SQLite database in its tmp_path. Shown for each queue type:
the type RabbitMQ reports for every queue cachework declares (`rabbitmqctl list_queues`),
a lookup, a version import, a lookup that retries with a countdown, an invalidation seen
by the next lookups, and a warm SIGTERM that lets a running task finish. For quorum: a
retry's countdown waits in RabbitMQ's delay queues (native delayed delivery), so retries
waiting out their backoff do not hold the worker's static prefetch; a plain Celery client
with `task_default_queue_type = "quorum"` reaches the workers. And a queue that already
exists with the other type stops the worker with one line naming the queue, its type and
the setting (it used to die with Celery's 'Unrecoverable error' traceback).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.seed import seed
from tests import flaky_tables
from tests.conftest import AMQP_HOST, MODELS, RUN_ID, make_env, unavailable

pytestmark = pytest.mark.topology

OURS = ("versions", "cache", "invalidations", "celery")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _ctl(*args: str, timeout: float = 90) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=timeout
    )
    return done.stdout


@pytest.fixture
def vhost() -> Iterator[tuple[str, str]]:
    """(AMQP URL, vhost name): a vhost of this test's own, deleted at the end."""
    name = f"cachework-rabbit-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    try:
        _ctl("add_vhost", name)
        _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except Exception as exc:  # no rabbitmqctl, no server
        unavailable("RabbitMQ (rabbitmqctl)", exc)
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}/{name}", name
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=90)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> tuple[str, Path]:
    """(URL, file): a SQLite database with every table and the demo's rows."""
    from cachework.worker.schema import create_tables

    path = tmp_path / "db" / "cachework.sqlite"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=1, products=12)
    engine.dispose()
    return url, path


def _env(tmp_path: Path, url: str, db_url: str, queue_type: str, **extra: str) -> dict:
    return make_env(
        tmp_path,
        database_url=db_url,
        broker_url=url,
        queue_type=queue_type,
        cached_tables="tests.flaky_tables",
        **extra,
    )


def queue_types(vhost: str) -> dict[str, tuple[str, str]]:
    """{queue: (type, arguments)} as RabbitMQ reports them."""
    out = _ctl("-q", "-p", vhost, "list_queues", "name", "type", "arguments")
    rows = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] != "name":
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def ready_messages(url: str) -> dict[str, int]:
    """{queue: messages ready} for cachework's queues, from a passive declare of each."""
    from kombu import Connection

    with Connection(url) as conn:
        channel = conn.channel()
        return {q: channel.queue_declare(q, passive=True).message_count for q in OURS}


def _lookup(app, table: str, key: int, timeout: float = 60) -> dict:
    return app.send_task("cachework.lookup", kwargs={"table": table, "key": key}).get(
        timeout=timeout, interval=0.05
    )


def _log_times(text: str, task_id: str, what: str) -> list[datetime]:
    """Timestamps of the worker log's lines about `task_id` that contain `what`."""
    times = []
    for line in text.splitlines():
        found = LOG_TIME.match(line)
        if found and task_id in line and what in line:
            times.append(datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return times


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_every_kind_of_job_runs_on_each_queue_type(
    queue_type, vhost, sqlite_db, tmp_path, worker_process
):
    url, name = vhost
    db_url, db_file = sqlite_db
    node, app = worker_process(_env(tmp_path, url, db_url, queue_type), concurrency=2)

    # The queues, as RabbitMQ has them.
    found = queue_types(name)
    for queue in OURS:
        kind, arguments = found[queue]
        assert kind == queue_type, (queue, found[queue])
        assert ('"x-queue-type","quorum"' in arguments) == (queue_type == "quorum"), arguments
        assert "x-max-priority" not in arguments  # quorum queues have no priorities
    pidbox = [q for q in found if q.endswith(".pidbox")]
    assert pidbox and all(found[q][0] == "classic" for q in pidbox)  # remote control: classic
    delayed = {q for q in found if q.startswith("celery_delayed_")}
    assert len(delayed) == (28 if queue_type == "quorum" else 0), sorted(delayed)

    # A lookup, a version import.
    assert _lookup(app, "categories", 1)["id"] == 1
    imported = app.send_task("cachework.import_versions", kwargs={"comment": "rabbit"}).get(
        timeout=120, interval=0.1
    )
    assert imported["transaction_id"] is not None
    assert sum(m.get("created", 0) for m in imported["models"].values()) > 0, imported

    # A lookup that fails twice and retries with its backoff (1 s, then 2 s).
    flaky_tables.arm(db_file, 2, 2)
    sent = time.monotonic()
    retried = app.send_task("cachework.lookup", kwargs={"table": "flaky", "key": 2})
    assert retried.get(timeout=60, interval=0.05)["id"] == 2
    assert time.monotonic() - sent >= 2.5  # it did wait out both countdowns
    assert flaky_tables.failures_left(db_file, 2) == 0
    text = node.logfile.read_text(errors="replace")
    received = _log_times(text, retried.id, " received")
    retries = _log_times(text, retried.id, " retry: Retry in ")
    assert len(received) == 3 and len(retries) == 2, text[-3000:]
    if queue_type == "quorum":
        # Native delayed delivery: each retry reaches the worker only when its countdown
        # is over (held in the worker, it would be received right after the retry).
        gaps = [(r - t).total_seconds() for t, r in zip(retries, received[1:], strict=True)]
        assert gaps[0] >= 0.8 and gaps[1] >= 1.6, gaps
    assert "direct exchange" not in text, text[-3000:]  # Celery's warning: ETA in the worker

    # An invalidation: the next lookups in every child read the new row.
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE categories SET name = 'Renamed' WHERE id = 3"))
    engine.dispose()
    assert _lookup(app, "categories", 3)["name"] != "Renamed"  # cached: no invalidation yet
    app.send_task(
        "cachework.process_invalidation", kwargs={"table": "categories", "keys": [3]}
    ).get(timeout=60, interval=0.05)
    names = {_lookup(app, "categories", 3)["name"] for _ in range(6)}
    assert names == {"Renamed"}, names

    assert node.stop() == 0  # a warm shutdown that ends by itself


def test_retries_waiting_out_their_countdown_do_not_hold_a_quorum_worker(
    vhost, sqlite_db, tmp_path, worker_process
):
    """Quorum queues have no global QoS: Celery's prefetch is static (here 1: one child,
    multiplier 1). A retry held in the worker until its countdown keeps that one slot, so
    the node would take nothing else for seconds; through the delay queues it is free."""
    url, _name = vhost
    db_url, db_file = sqlite_db
    node, app = worker_process(_env(tmp_path, url, db_url, "quorum"), concurrency=1)
    assert "Global QoS is disabled" in node.logfile.read_text(errors="replace")
    flaky_tables.arm(db_file, 4, 3)  # retried in 1, 2 and 4 s
    waiting = app.send_task("cachework.lookup", kwargs={"table": "flaky", "key": 4})
    time.sleep(0.5)  # it failed once and waits out its first countdown
    slowest = 0.0
    deadline = time.monotonic() + 5.0  # within the retries' 7 s of countdowns
    while time.monotonic() < deadline:
        started = time.monotonic()
        assert _lookup(app, "categories", 5, timeout=30)["id"] == 5
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.1)
    assert waiting.get(timeout=60, interval=0.05)["id"] == 4
    assert slowest < 0.9, f"a lookup waited {slowest:.2f}s behind a retry's countdown"


def test_a_plain_client_set_to_quorum_reaches_quorum_workers(
    vhost, sqlite_db, tmp_path, worker_process
):
    """The README's client on a quorum broker: Celery's default queue, no routing."""
    from celery import Celery

    url, _name = vhost
    db_url, _db_file = sqlite_db
    _node, app = worker_process(_env(tmp_path, url, db_url, "quorum"))
    client = Celery("plain-client", broker=url, set_as_current=False)
    client.conf.task_default_queue_type = "quorum"
    client.conf.task_create_missing_queue_type = "quorum"
    try:
        sent = client.send_task("cachework.lookup", kwargs={"table": "categories", "key": 6})
        routed = client.send_task(
            "cachework.lookup", kwargs={"table": "categories", "key": 7}, queue="cache"
        )
        assert app.AsyncResult(sent.id).get(timeout=60, interval=0.05)["id"] == 6
        assert app.AsyncResult(routed.id).get(timeout=60, interval=0.05)["id"] == 7
    finally:
        client.close()


@pytest.mark.parametrize(("existing", "setting"), [("quorum", "classic"), ("classic", "quorum")])
def test_a_queue_of_the_other_type_stops_the_worker_with_one_line(
    existing, setting, vhost, sqlite_db, tmp_path
):
    from kombu import Connection, Exchange, Queue

    from cachework.errors import ConfigError
    from cachework.settings import load_settings
    from cachework.worker import create_app
    from cachework.worker.spawn import WorkerProcess

    url, name = vhost
    db_url, _db_file = sqlite_db
    arguments = {"x-queue-type": existing} if existing == "quorum" else None
    with Connection(url) as conn:
        Queue("cache", Exchange("cache"), "cache", queue_arguments=arguments)(
            conn.default_channel
        ).declare()
    assert queue_types(name)["cache"][0] == existing

    env = _env(tmp_path, url, db_url, setting)
    node = WorkerProcess(env, concurrency=1, logfile=tmp_path / "mismatch.log").start()
    try:
        code = node.proc.wait(90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop:\n{node._tail(30)}")
    finally:
        node.stop()
    text = (tmp_path / "mismatch.log").read_text(errors="replace")
    other = "quorum" if setting == "classic" else "classic"
    line = (
        f"error: RabbitMQ queue 'cache' (vhost '{name}') is a {existing} queue, but "
        f"CACHEWORK_QUEUE_TYPE is {setting}: set CACHEWORK_QUEUE_TYPE={other}, or stop every "
        "worker, let the queue drain and delete it "
        f"(rabbitmqctl -p {name} delete_queue cache) so it is declared again as {setting}"
    )
    assert code == 2, text[-3000:]
    assert line in text.splitlines(), text[-3000:]
    assert "Traceback" not in text and "Unrecoverable error" not in text, text[-3000:]
    assert queue_types(name)["cache"][0] == existing  # nothing was changed

    # A client of the same settings: a ConfigError with the same line, no traceback.
    app = create_app(load_settings(env))
    try:
        with pytest.raises(ConfigError) as refused:
            app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1})
        assert f"error: {refused.value}" == line
    finally:
        app.runtime.close()
        app.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_warm_sigterm_lets_a_running_task_finish(
    queue_type, vhost, sqlite_db, tmp_path, worker_process
):
    url, name = vhost
    db_url, _db_file = sqlite_db
    node, app = worker_process(_env(tmp_path, url, db_url, queue_type), concurrency=1)
    running = app.send_task("cachework.ping", kwargs={"hold": 4})
    deadline = time.monotonic() + 30
    while running.state != "STARTED":
        assert time.monotonic() < deadline, node._tail(20)
        time.sleep(0.05)
    node.proc.send_signal(signal.SIGTERM)  # warm shutdown: the running task finishes
    assert node.proc.wait(60) == 0, node._tail(30)
    assert running.get(timeout=10, interval=0.05)["pid"] != node.proc.pid
    assert running.state == "SUCCESS"
    waiting = queue_types(name)
    assert all(kind == queue_type for q, (kind, _a) in waiting.items() if q in OURS)
    # Nothing left behind: the finished task was acknowledged, not requeued (asked of the
    # queues themselves: rabbitmqctl's counts of a quorum queue lag by seconds).
    assert ready_messages(url) == dict.fromkeys(OURS, 0)
