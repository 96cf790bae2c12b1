"""The fault suite (`make faults`, marker `faults`; not part of `make test`): each scenario
of issue 12 against real services and real prefork workers. This module holds

- SIGKILL of a pool child and of a whole worker during a rebuild and during an import
  (the run's PostgreSQL database, its own Redis as broker, result backend and locks);
- a PostgreSQL restart (a server of the suite's own) during an import, a rebuild and a
  stream of lookups.

tests/test_faults_redis.py holds a Redis restart and a SIGSTOP of the invalidation
stream's server under invalidation traffic, and junk and oversize log entries;
tests/test_faults_bad_input.py the bad-input matrix over every task and every CLI command.

Each scenario adds a row to the results table (tries, completed, lost, stale, partial),
written to `.cachework/faults-report.md` and printed at the end; every row must show 0
lost, 0 stale, 0 partial. docs/reliability.md keeps the table of a run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import RedisLog, publish
from cachework.cache.items import store
from demo.seed import project_uuid
from tests.conftest import make_env
from tests.fault_helpers import TABLE, OwnPostgres, children_of, kill_group, wait_until
from tests.fault_nodes import Node, fresh_schema
from tests.project_cache_helpers import HOLD_KEY, price_total, started_key

pytestmark = pytest.mark.faults

# test_faults_locks and test_faults_read_your_writes import Node and this name from here
_fresh_schema = fresh_schema


# --- SIGKILL during rebuilds and imports -------------------------------------------------


@pytest.fixture(scope="module")
def killing(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("faults-kill")
    engine = fresh_schema(pg_server_url)
    url = redis_server_url.rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = make_env(
        folder,
        database_url=pg_server_url,
        broker_url=url,
        result_backend=url,
        redis_url=url,
        models="demo.models,tests.project_cache_helpers",
        cache_lock_ttl_ms="2000",
        broker_visibility_timeout="10",
    )
    nodes = Node(env, folder)
    try:
        yield {"engine": engine, "redis": client, "nodes": nodes, "folder": folder}
    finally:
        nodes.close()
        client.flushdb()
        client.close()
        engine.dispose()


def _bump_prices(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE products SET price = price + 1"))


def _item_current(engine: sa.Engine, project: str) -> bool:
    with sa.orm.Session(engine) as session:
        item = store.get_item(session, "recorder", "total", project=project)
        return item is not None and item.data == {"sum": price_total(session, project)}


def _rebuild_started(client: redis.Redis, project: str, timeout: float = 30) -> int:
    popped = client.blpop([started_key(project)], timeout=timeout)
    assert popped is not None, "the rebuild never started"
    return int(popped[1])


@pytest.mark.parametrize("target", ["child", "worker"])
def test_sigkill_during_a_rebuild_loses_nothing(killing, target):
    engine, client, nodes = killing["engine"], killing["redis"], killing["nodes"]
    row = TABLE.row(f"SIGKILL of a {target} during a rebuild")
    node = nodes.start() if not nodes.nodes or target == "worker" else nodes.nodes[-1]
    project = project_uuid(0)
    for _ in range(3 if target == "child" else 2):
        row.tries += 1
        _bump_prices(engine)
        client.set(HOLD_KEY, "3")
        client.delete(started_key(project))
        sent = nodes.app.send_task(
            "cachework.sync_cache", kwargs={"project": project, "app_name": "recorder"}
        )
        pid = _rebuild_started(client, project)
        client.set(HOLD_KEY, "0.2")
        if target == "child":
            os.kill(pid, signal.SIGKILL)
        else:
            kill_group(node.proc.pid)
        row.mid_run += not _item_current(engine, project)
        if target == "worker":
            node = nodes.start()  # the message comes back after the visibility timeout
        try:
            sent.get(timeout=120, interval=0.2)
        except Exception as exc:  # the result of a killed run: the item decides
            row.notes.append(f"{type(exc).__name__}")
        if _item_current(engine, project):
            row.completed += 1
        else:
            row.lost += 1
    assert row.lost == 0 and row.stale == 0 and row.partial == 0, row


def _transactions(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM transaction")).scalar_one()


def _orphan_versions(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM products_version v LEFT JOIN transaction t "
                "ON t.id = v.transaction_id WHERE t.id IS NULL"
            )
        ).scalar_one()


def _pending_changes(app) -> int:
    result = app.send_task("cachework.import_versions", kwargs={"dry_run": True}).get(
        timeout=120, interval=0.2
    )
    return sum(c["created"] + c["updated"] + c["deleted"] for c in result["models"].values())


def _import_outcome(row, engine, app, before: int) -> None:
    """After a faulted import: nothing left to import (else lost), exactly one new
    transaction and no version without its transaction (else partial)."""
    if _pending_changes(app):
        row.lost += 1
    elif _transactions(engine) - before != 1 or _orphan_versions(engine):
        row.partial += 1
    else:
        row.completed += 1


def _transactions_after_restart_pending(sent) -> bool:
    """The server went down while the import had not finished (its result not ready)."""
    return not sent.ready()


def _wait_started(sent, timeout: float = 60) -> None:
    wait_until(lambda: sent.state in ("STARTED", "SUCCESS", "FAILURE"), timeout=timeout)


PAUSE = """
CREATE OR REPLACE FUNCTION faults_pause() RETURNS trigger AS $$
BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE TRIGGER faults_pause BEFORE INSERT ON products_version
FOR EACH STATEMENT EXECUTE FUNCTION faults_pause();
"""


def _paused_in_write(engine: sa.Engine) -> bool:
    """An import is inside its write of product versions (the pause trigger sleeps)."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            ).scalar_one()
        )


@pytest.mark.parametrize("target", ["child", "worker"])
def test_sigkill_during_an_import_loses_nothing_and_writes_one_transaction(killing, target):
    """The import is paused inside its write (a statement trigger on the version table
    sleeps 3 s), then killed: its transaction must leave nothing, and the redelivered
    run must write everything, once."""
    engine, nodes = killing["engine"], killing["nodes"]
    row = TABLE.row(f"SIGKILL of a {target} during an import")
    node = nodes.start() if not nodes.nodes or target == "worker" else nodes.nodes[-1]
    for _ in range(3 if target == "child" else 2):
        row.tries += 1
        _bump_prices(engine)
        before = _transactions(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(PAUSE))
        try:
            sent = nodes.app.send_task("cachework.import_versions", kwargs={"user": "faults"})
            wait_until(lambda: _paused_in_write(engine), timeout=60, every=0.05)
            if target == "child":
                for child in children_of(node.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
            else:
                kill_group(node.proc.pid)
            row.mid_run += 1
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text("DROP TRIGGER IF EXISTS faults_pause ON products_version"))
        if target == "worker":
            node = nodes.start()
        with contextlib.suppress(Exception):
            sent.get(timeout=180, interval=0.2)
        _import_outcome(row, engine, nodes.app, before)
    assert row.lost == 0 and row.stale == 0 and row.partial == 0, row


# --- PostgreSQL restarts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def restarting(redis_server_url, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("faults-pg")
    pg = OwnPostgres().init()
    pg.start()
    url = redis_server_url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    nodes = None
    try:
        engine = fresh_schema(pg.url)
        env = make_env(
            folder,
            database_url=pg.url,
            broker_url=url,
            result_backend=url,
            redis_url=url,
            models="demo.models,tests.project_cache_helpers",
            cache_lock_ttl_ms="3000",
        )
        nodes = Node(env, folder)
        nodes.start()
        yield {"pg": pg, "engine": engine, "redis": client, "nodes": nodes}
    finally:
        if nodes is not None:
            nodes.close()
        client.flushdb()
        client.close()
        pg.destroy()


def test_postgres_restart_during_an_import(restarting):
    engine, nodes, pg = restarting["engine"], restarting["nodes"], restarting["pg"]
    row = TABLE.row("PostgreSQL restart during an import")
    for _ in range(2):
        row.tries += 1
        _bump_prices(engine)
        before = _transactions(engine)
        sent = nodes.app.send_task("cachework.import_versions", kwargs={"user": "faults"})
        _wait_started(sent)
        pg.stop()
        row.mid_run += _transactions_after_restart_pending(sent)
        time.sleep(1.0)
        pg.start()
        with contextlib.suppress(Exception):
            sent.get(timeout=180, interval=0.2)
        _import_outcome(row, engine, nodes.app, before)
    assert row.lost == 0 and row.partial == 0, row


def test_postgres_restart_during_a_rebuild(restarting):
    engine, nodes, pg = restarting["engine"], restarting["nodes"], restarting["pg"]
    client = restarting["redis"]
    row = TABLE.row("PostgreSQL restart during a rebuild")
    project = project_uuid(1)
    for _ in range(2):
        row.tries += 1
        _bump_prices(engine)
        client.set(HOLD_KEY, "2")
        client.delete(started_key(project))
        sent = nodes.app.send_task(
            "cachework.sync_cache", kwargs={"project": project, "app_name": "recorder"}
        )
        _rebuild_started(client, project)
        client.set(HOLD_KEY, "0.2")
        pg.restart(down_for=1.0)
        row.mid_run += 1  # the plugin holds 2 s: the restart lands before its commit
        with contextlib.suppress(Exception):
            sent.get(timeout=180, interval=0.2)
        if _item_current(engine, project):
            row.completed += 1
        else:
            row.lost += 1
    assert row.lost == 0, row


def test_postgres_restart_during_lookups(restarting):
    """A 3 s restart while lookups flow: every lookup answers (the retry budget outlasts
    it), and after a rename and its invalidation every lookup reads the new name."""
    engine, nodes, pg = restarting["engine"], restarting["nodes"], restarting["pg"]
    row = TABLE.row("PostgreSQL restart (3 s) during lookups")
    app = nodes.app
    log = RedisLog(redis.Redis.from_url(nodes.env["CACHEWORK_REDIS_URL"]))
    stop = threading.Event()
    results: list = []

    def lookups() -> None:
        while not stop.is_set():
            sent = app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 2})
            try:
                results.append(sent.get(timeout=90, interval=0.05))
            except Exception as exc:
                results.append(exc)

    threads = [threading.Thread(target=lookups, name=f"faults-lookups-{i}") for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        pg.restart(down_for=3.0)
        time.sleep(2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    row.tries += len(results)
    row.lost += sum(1 for r in results if isinstance(r, Exception) or r is None)
    row.completed += sum(1 for r in results if isinstance(r, dict))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE categories SET name = 'after-restart' WHERE id = 2"))
    publish("categories", [2], log=log)
    after = [
        app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 2})
        for _ in range(20)
    ]
    names = [a.get(timeout=60, interval=0.05)["name"] for a in after]
    row.tries += len(names)
    row.completed += len(names)
    row.stale += sum(1 for n in names if n != "after-restart")
    log.client.close()
    assert row.lost == 0 and row.stale == 0, (row, [r for r in results if not isinstance(r, dict)])
