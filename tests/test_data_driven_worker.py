"""Data-driven rebuilds through a real prefork worker node on PostgreSQL + Redis (issue 23).

A web process's tracked writes (and raw SQL with the triggers installed) rebuild exactly
the declared items of the projects they touch, within the debounce bound, and leave the
other projects' items untouched; a rollback schedules nothing; a burst of 1,000 writes is
at most 3 rebuilds whose last one reads the last write; a worker killed mid-rebuild
leaves the item rebuilt later.

Rebuilds are counted by the test plugin `watch` (tests/data_driven_app.py), which records
each one in Redis, and by the demo's items' `updated_at`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework.cache.invalidation import track
from cachework.cache.invalidation import triggers as db_triggers
from cachework.cache.invalidation.dependencies import dependencies
from cachework.cache.items import changes, store
from cachework.settings import load_settings
from cachework.worker import create_app
from cachework.worker.runtime import Runtime
from cachework.worker.schema import create_tables
from cachework.worker.spawn import WorkerProcess
from demo.models import Product, Project
from demo.seed import seed
from tests.conftest import MODELS, empty_schema, make_env
from tests.data_driven_app import HOLD_KEY, rebuilds_key, started_key
from tests.project_cache_helpers import price_total

DELAY, EVERY = 0.5, 5.0
# A change is rebuilt within max(DELAY, EVERY) plus the follower's tick and the task's
# trip; the slack is for a loaded 2-core CI machine.
BOUND = max(DELAY, EVERY) + 6.0


@pytest.fixture(scope="module")
def node(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("data-driven")
    empty_schema(pg_server_url)
    engine = sa.create_engine(pg_server_url, poolclass=sa.pool.NullPool)
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=4, products=40)
    env = make_env(
        folder,
        database_url=pg_server_url,
        broker_url=redis_server_url,
        result_backend=redis_server_url,
        redis_url=redis_server_url,
        models="demo.models,tests.data_driven_app",
        rebuild_delay=str(DELAY),
        rebuild_every=str(EVERY),
        rebuild_resend="10",
        cache_lock_ttl_ms="3000",
    )
    settings = load_settings(env)
    client = redis.Redis.from_url(redis_server_url)
    client.delete(HOLD_KEY)
    web = Runtime(settings).start()  # the web process: read-your-writes and tracking
    Session = sessionmaker(engine)
    tracking = track(Session, web)
    app = create_app(settings)
    worker = WorkerProcess(
        env, concurrency=2, name=f"dd{time.monotonic_ns()}@127.0.0.1", logfile=folder / "w.log"
    )
    try:
        worker.start().wait_ready(app, timeout=90)
        # Every item exists before the first change.
        app.send_task("cachework.sync_cache").get(timeout=90, interval=0.05)
        yield {
            "engine": engine,
            "Session": Session,
            "web": web,
            "redis": client,
            "worker": worker,
            "app": app,
            "projects": sorted(str(p) for p in Session().scalars(sa.select(Project.uuid))),
        }
    finally:
        worker.stop(timeout=15)
        tracking.stop()
        web.stop()
        web.close()
        app.close()
        client.delete(HOLD_KEY)
        client.close()
        engine.dispose()


def built_at(node: dict, project: str) -> dict[str, object]:
    """`updated_at` of each of the project's items, by (app, name)."""
    with node["web"].database.session() as session:
        items = store.get_project_items(session, project)
    return {(i.app_name, i.name): i.updated_at for i in items}


def watched(node: dict, project: str) -> list[list]:
    return [json.loads(r) for r in node["redis"].lrange(rebuilds_key(project), 0, -1)]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:.1f}s: {what}")


def product_of(node: dict, project: str) -> int:
    with node["Session"]() as session:
        return session.scalars(
            sa.select(Product.id).where(Product.project_uuid == project).order_by(Product.id)
        ).first()


def total_of(node: dict, project: str) -> str:
    with node["Session"]() as session:
        return price_total(session, project)


def item_total(node: dict, project: str) -> str | None:
    with node["web"].database.session() as session:
        item = store.get_item(session, "watch", "total", project)
    return None if item is None else item.data["sum"]


def test_an_orm_write_rebuilds_its_projects_items_and_no_others(node):
    p, q = node["projects"][0], node["projects"][1]
    before_p, before_q = built_at(node, p), built_at(node, q)
    product = product_of(node, p)
    started = time.monotonic()
    with node["Session"].begin() as session:
        session.get(Product, product).price = Decimal("1234.50")
    want = total_of(node, p)
    wait_for(lambda: item_total(node, p) == want, BOUND, f"watch/total of {p} = {want}")
    elapsed = time.monotonic() - started
    after_p = wait_for(
        lambda: (b := built_at(node, p)) and all(b[k] > before_p[k] for k in before_p) and b,
        BOUND,
        "every declared item of P rebuilt",
    )
    assert (
        set(after_p)
        == set(before_p)
        == {
            ("inventory", "summary"),
            ("inventory", "by_category"),
            ("watch", "total"),
        }
    )
    with node["web"].database.session() as session:
        fresh = changes.freshness(session, "inventory", "summary", p)
    assert fresh.built_at == after_p[("inventory", "summary")]
    time.sleep(EVERY + 1)  # what Q could have been sent by now would have run
    assert built_at(node, q) == before_q, "project Q's items were rebuilt"
    assert elapsed < BOUND


def test_a_rollback_schedules_nothing(node):
    p = node["projects"][2]
    before = built_at(node, p)
    with node["Session"]() as session:
        session.get(Product, product_of(node, p)).price = Decimal("1")
        session.flush()
        session.rollback()
    time.sleep(DELAY + EVERY + 1)
    assert built_at(node, p) == before
    with node["web"].database.engine.connect() as conn:
        assert [s for s in changes.pending(conn) if s["project"] == p] == []


def test_a_raw_sql_write_with_triggers_installed_does_the_same(node):
    engine, web = node["engine"], node["web"]
    p, q = node["projects"][3], node["projects"][0]
    db_triggers.install(engine, dependencies(web))
    try:
        before_q = built_at(node, q)
        product = product_of(node, p)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE products SET price = 777 WHERE id = :id"), {"id": product})
        want = total_of(node, p)
        wait_for(lambda: item_total(node, p) == want, BOUND, f"watch/total of {p} = {want}")
        time.sleep(EVERY + 1)
        assert built_at(node, q) == before_q
    finally:
        db_triggers.remove(engine)


def test_a_burst_of_1000_writes_is_at_most_3_rebuilds_and_the_last_reads_the_last(node):
    p, q = node["projects"][1], node["projects"][2]
    wait_for(lambda: _quiet(node, p), BOUND, "no rebuild of P pending")
    rebuilds_before, before_q = len(watched(node, p)), built_at(node, q)
    ids = _products(node, p)
    per_thread = 250

    def writer(offset: int) -> None:
        for i in range(per_thread):  # one UPDATE per transaction, tracked by RETURNING
            with node["Session"].begin() as session:
                session.execute(
                    sa.update(Product)
                    .where(Product.id == ids[(offset + i) % len(ids)])
                    .values(price=Decimal(offset * per_thread + i) / 100)
                )

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    burst = time.monotonic() - started
    want = total_of(node, p)
    wait_for(lambda: item_total(node, p) == want, BOUND + burst, "the last write rebuilt")
    time.sleep(EVERY + 1)  # a rebuild still due would have come by now
    rebuilds = watched(node, p)[rebuilds_before:]
    # A burst shorter than DELAY + 2 * EVERY can only be 3 rebuilds: DELAY after its
    # first write, EVERY later, and EVERY later again for what came during the second.
    assert burst < DELAY + 2 * EVERY, f"the burst took {burst:.1f}s, too long to count"
    assert 1 <= len(rebuilds) <= 3, rebuilds
    assert rebuilds[-1][2] == want  # the last rebuild read the last write
    assert built_at(node, q) == before_q


def test_a_worker_killed_mid_rebuild_leaves_it_rebuilt_later(node):
    p = node["projects"][3]
    wait_for(lambda: _quiet(node, p), BOUND, "no rebuild of P pending")
    client = node["redis"]
    client.delete(started_key(p))
    client.set(HOLD_KEY, 60)
    try:
        with node["Session"].begin() as session:
            session.get(Product, product_of(node, p)).price = Decimal("4242")
        want = total_of(node, p)
        pid = int(wait_for(lambda: client.lindex(started_key(p), 0), BOUND, "a rebuild started"))
        os.kill(pid, signal.SIGKILL)  # the pool child running the rebuild
    finally:
        client.delete(HOLD_KEY)
    wait_for(lambda: item_total(node, p) == want, 60, f"watch/total of {p} rebuilt after the kill")
    assert node["worker"].proc.poll() is None  # the node lives on, with a new child


def _products(node: dict, project: str) -> list[int]:
    with node["Session"]() as session:
        return list(session.scalars(sa.select(Product.id).where(Product.project_uuid == project)))


def _quiet(node: dict, project: str) -> bool:
    with node["web"].database.engine.connect() as conn:
        return not [s for s in changes.pending(conn) if s["project"] == project]
