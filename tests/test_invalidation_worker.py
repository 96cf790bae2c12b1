"""Invalidation end to end: 2 real prefork worker nodes x 2 children, PostgreSQL, a Redis
broker, and a Redis server of this module's own for the invalidation stream (so it can be
restarted). One set of nodes is shared by the whole module (they are expensive here)."""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import LogUnavailable, RedisLog, publish
from cachework.cache.invalidation.events import id_key, validate_event
from tests.conftest import MODELS, make_env
from tests.invalidation_helpers import OwnRedis, wait_until

NAME = re.compile(r"^cat(\d+)-v(\d+)$")
CATEGORIES = range(1, 9)


@dataclass
class Cluster:
    app: object
    engine: sa.Engine
    log: RedisLog
    server: OwnRedis
    version: int = 0

    def write(self, key: int) -> int:
        """Rename category `key` to a new version with plain SQL; returns the version."""
        self.version += 1
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE categories SET name = :n WHERE id = :k"),
                {"n": f"cat{key}-v{self.version}", "k": key},
            )
        return self.version

    def lookups(self, key: int, count: int) -> list[dict]:
        pending = [
            self.app.send_task("cachework.lookup", kwargs={"table": "categories", "key": key})
            for _ in range(count)
        ]
        return [p.get(timeout=30, interval=0.01) for p in pending]

    def statuses(self, want: int = 4, rounds: int = 40) -> dict[int, dict]:
        """cache_status of every child: bursts until `want` distinct pids answered."""
        seen: dict[int, dict] = {}
        for _ in range(rounds):
            pending = [self.app.send_task("cachework.cache_status") for _ in range(8)]
            for p in pending:
                status = p.get(timeout=30, interval=0.01)
                seen[status["pid"]] = status
            if len(seen) >= want:
                return seen
        raise AssertionError(f"only {len(seen)} of {want} children answered: {sorted(seen)}")

    def every_child(
        self, predicate, timeout: float = 20.0, key: int = 1, expect: str | None = None
    ) -> dict[int, dict]:
        """Burst lookups of category `key` (each must read `expect` when given) and statuses
        until `predicate(status)` holds in all 4 children (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            names = {r["name"] for r in self.lookups(key, 8)}
            assert expect is None or names == {expect}, (names, expect)
            statuses = self.statuses()
            if all(predicate(s) for s in statuses.values()) and len(statuses) == 4:
                return statuses
            if time.monotonic() > deadline:
                raise AssertionError(f"not every child got there: {statuses}")


@pytest.fixture(scope="module")
def cluster(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[Cluster]:
    from cachework.settings import load_settings
    from cachework.worker import create_app
    from cachework.worker.schema import create_tables
    from cachework.worker.spawn import WorkerProcess
    from demo.seed import seed

    folder = tmp_path_factory.mktemp("invalidation")
    engine = sa.create_engine(pg_server_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=1, products=5)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE categories SET name = 'cat' || id || '-v0'"))
    broker = redis.Redis.from_url(redis_server_url)
    broker.flushdb()
    broker.close()
    server = OwnRedis(folder / "redis").start()
    env = make_env(
        folder,
        database_url=pg_server_url,
        broker_url=redis_server_url,
        result_backend=redis_server_url,
        redis_url=server.url,
        listener_stale_after="2",
    )
    app = create_app(load_settings(env))
    nodes = [
        WorkerProcess(env, concurrency=2, name=f"inv{i}@127.0.0.1", logfile=folder / f"w{i}.log")
        for i in range(2)
    ]
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(app, timeout=90)
        yield Cluster(app, engine, RedisLog(client), server)
    finally:
        for node in nodes:
            node.stop()
        app.close()
        client.close()
        server.stop()
        engine.dispose()


def test_one_event_reaches_all_four_children_and_lookups_see_the_new_value(cluster):
    before = cluster.every_child(lambda s: s["tables"]["categories"]["loaded"])
    catch_ups = {pid: s["listener"]["catch_ups"] for pid, s in before.items()}
    version = cluster.write(1)
    event_id = publish("categories", [1], log=cluster.log)
    time.sleep(0.3)  # the listeners, not the task-start catch-up, should apply it
    after = cluster.statuses()
    assert len(after) == 4
    for pid, status in after.items():
        assert id_key(status["cursor"]) >= id_key(event_id), (pid, status)
        assert status["listener"]["connected"] is True
        assert status["listener"]["catch_ups"] == catch_ups.get(pid, 0), status["listener"]
    refreshed = {pid: s["tables"]["categories"]["refreshes"] for pid, s in after.items()}
    statuses = cluster.every_child(
        lambda s: s["tables"]["categories"]["refreshes"] > refreshed[s["pid"]],
        expect=f"cat1-v{version}",
    )
    assert len(statuses) == 4  # every child refreshed the record and served the new value
    assert {r["name"] for r in cluster.lookups(1, 16)} == {f"cat1-v{version}"}
    # The probe the benchmark reads: every child lists the event, with when it applied it.
    probe = cluster.app.send_task("cachework.invalidation_probe", kwargs={"since": "0"})
    applied = dict(probe.get(timeout=30, interval=0.01)["applied"])
    assert event_id in applied and applied[event_id] > 0, applied


def test_outbox_rows_reach_every_child_through_the_worker_relay(cluster):
    session = sa.orm.Session(cluster.engine)
    with pytest.raises(RuntimeError), session, session.begin():
        session.execute(sa.text("UPDATE categories SET name = 'never' WHERE id = 2"))
        publish("categories", [2], session=session)
        raise RuntimeError("rolled back")
    head = cluster.log.state().head
    cluster.version += 1
    name = f"cat2-v{cluster.version}"
    with sa.orm.Session(cluster.engine) as session, session.begin():
        session.execute(sa.text("UPDATE categories SET name = :n WHERE id = 2"), {"n": name})
        assert publish("categories", [2], session=session) is None
    wait_until(lambda: id_key(cluster.log.state().head) > id_key(head), timeout=10)
    entries = cluster.log.read(head).entries
    assert len(entries) == 1 and b'"keys":[2]' in entries[0][1]  # the rolled-back one: never

    def outbox_rows() -> int:
        with cluster.engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM invalidation_outbox")).scalar()

    # A relay appends to the stream first, then deletes the row: gone within moments.
    assert wait_until(lambda: outbox_rows() == 0, timeout=10)
    assert {r["name"] for r in cluster.lookups(2, 16)} == {name}


def _randomized(cluster: Cluster, ops: int, seed: int) -> tuple[int, list[str]]:
    """Writes+publishes and reads from all children; returns (reads, stale reads)."""
    rng = random.Random(seed)
    latest = {k: None for k in CATEGORIES}
    pending: list[tuple[int, int, object]] = []  # (key, version published before send, result)
    stale: list[str] = []
    reads = 0

    def collect() -> None:
        nonlocal reads
        for key, floor, result in pending:
            record = result.get(timeout=30, interval=0.005)
            version = int(NAME.match(record["name"]).group(2))
            reads += 1
            if version < floor:
                stale.append(f"category {key}: read v{version}, v{floor} was published before")
        pending.clear()

    with cluster.engine.connect() as conn:
        for key in CATEGORIES:
            name = conn.execute(sa.text("SELECT name FROM categories WHERE id = :k"), {"k": key})
            latest[key] = int(NAME.match(name.scalar_one()).group(2))
    for _ in range(ops):
        key = rng.choice(CATEGORIES)
        if rng.random() < 0.35:
            version = cluster.write(key)
            keys = None if rng.random() < 0.15 else [key]
            publish("categories", keys, log=cluster.log)
            latest[key] = version
        else:
            sent = cluster.app.send_task(
                "cachework.lookup", kwargs={"table": "categories", "key": key}
            )
            pending.append((key, latest[key], sent))
            if len(pending) >= 6:
                collect()
    collect()
    return reads, stale


def test_randomized_writes_and_reads_never_read_what_was_invalidated(cluster):
    reads, stale = _randomized(cluster, ops=300, seed=6)
    assert reads > 150
    assert stale == []
    statuses = cluster.statuses()
    assert all(s["tables"]["categories"]["refreshes"] > 0 for s in statuses.values())


def test_children_whose_cursor_was_trimmed_away_drop_their_tables(cluster):
    before = cluster.every_child(lambda s: s["tables"]["categories"]["loaded"], key=4)
    gaps = {pid: s["listener"]["gaps"] for pid, s in before.items()}
    version = cluster.write(4)
    told = validate_event("categories", [4]).to_json()
    other = validate_event("products", [1]).to_json()
    # One transaction: no child can read between the appends and the trim, so the event
    # naming category 4 is trimmed away unread; only later ones (not about it) survive.
    with cluster.log.client.pipeline(transaction=True) as pipe:
        pipe.xadd(cluster.log.key, {"e": told})
        for _ in range(3):
            pipe.xadd(cluster.log.key, {"e": other})
        pipe.xtrim(cluster.log.key, maxlen=2, approximate=False)
        pipe.execute()
    statuses = cluster.every_child(
        lambda s: s["listener"]["gaps"] > gaps[s["pid"]], key=4, expect=f"cat4-v{version}"
    )
    for status in statuses.values():
        assert "gap" in status["listener"]["last_drop"], status["listener"]


def test_redis_restart_while_events_flow_then_no_stale_reads(cluster):
    stop = threading.Event()
    published: list[str] = []

    def keep_publishing() -> None:
        while not stop.is_set():
            with contextlib.suppress(LogUnavailable):
                published.append(publish("categories", [3], log=cluster.log))
            stop.wait(0.01)

    thread = threading.Thread(target=keep_publishing, name="test-publisher")
    drops = {pid: s["listener"]["drops"] for pid, s in cluster.statuses().items()}
    thread.start()
    try:
        time.sleep(0.3)
        cluster.server.restart(down_for=0.5)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(10)
    assert published, "events were flowing"

    def recovered(status: dict) -> bool:
        listener = status["listener"]
        return (
            listener["connected"]
            and listener["reconnects"] >= 1
            and listener["drops"] > drops.get(status["pid"], 0)
        )

    statuses = cluster.every_child(recovered, timeout=30)
    for status in statuses.values():  # the new stream meant lost events: tables dropped
        assert (
            "replaced" in status["listener"]["last_drop"]
            or "unreachable" in (status["listener"]["last_drop"])
        )
    reads, stale = _randomized(cluster, ops=80, seed=7)
    assert reads > 30 and stale == []
