"""The fault suite (`make faults`, marker `faults`; not part of `make test`): each scenario
of issue 12 against real services and real prefork workers.

- SIGKILL of a pool child and of a whole worker during a rebuild and during an import
  (the run's PostgreSQL database, its own Redis as broker, result backend and locks);
- a PostgreSQL restart (a server of the suite's own) during an import, a rebuild and a
  stream of lookups;
- a Redis restart and a SIGSTOP of the invalidation stream's server (its own) under
  invalidation traffic;
- junk and oversize entries in the Redis stream and in the database log table;
- the bad-input matrix over every task and every CLI command.

Each scenario adds a row to the results table (tries, completed, lost, stale, partial),
written to `.cachework/faults-report.md` and printed at the end; every row must show 0
lost, 0 stale, 0 partial. docs/reliability.md keeps the table of a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from cache.invalidation import DatabaseLog, RedisLog, publish
from cache.items import store
from cachework.errors import MESSAGE_MAX
from cachework.settings import load_settings
from demo.seed import project_uuid, seed
from tests.conftest import MODELS, make_env
from tests.fault_helpers import (
    TABLE,
    OwnPostgres,
    children_of,
    engine_for,
    kill_group,
    wait_until,
)
from tests.invalidation_helpers import OwnRedis
from tests.project_cache_helpers import HOLD_KEY, price_total, started_key

pytestmark = pytest.mark.faults


def _fresh_schema(url: str) -> sa.Engine:
    from worker.schema import create_tables

    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=2, products=4000)
    return engine


class Node:
    """Worker nodes of one environment, started and always stopped."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        from worker import create_app

        self.env = env
        self.folder = folder
        self.app = create_app(load_settings(env))
        self.nodes: list = []

    def start(self, concurrency: int = 2):
        from worker.spawn import WorkerProcess

        node = WorkerProcess(
            self.env,
            concurrency=concurrency,
            name=f"f{len(self.nodes)}x{time.monotonic_ns()}@127.0.0.1",
            logfile=self.folder / f"worker-{len(self.nodes)}.log",
        ).start()
        self.nodes.append(node)
        node.wait_ready(self.app, timeout=90)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.stop(timeout=10)
        self.app.runtime.close()
        self.app.close()


# --- SIGKILL during rebuilds and imports -------------------------------------------------


@pytest.fixture(scope="module")
def killing(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("faults-kill")
    engine = _fresh_schema(pg_server_url)
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
        engine = _fresh_schema(pg.url)
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


# --- Redis restart and SIGSTOP under invalidation traffic ----------------------------------


@pytest.fixture(scope="module")
def traffic(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("faults-redis")
    engine = _fresh_schema(pg_server_url)
    server = OwnRedis(folder / "stream").start()
    url = redis_server_url.rsplit("/", 1)[0] + "/7"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    env = make_env(
        folder,
        database_url=pg_server_url,
        broker_url=url,
        result_backend=url,
        redis_url=server.url,
        listener_stale_after="2",
    )
    nodes = Node(env, folder)
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
    try:
        nodes.start()
        yield {"engine": engine, "server": server, "nodes": nodes, "log": RedisLog(client)}
    finally:
        nodes.close()
        client.close()
        server.stop()
        broker.flushdb()
        broker.close()
        engine.dispose()


def _version_of(name: str) -> int:
    return int(name.rsplit("-v", 1)[1]) if "-v" in name else -1


@pytest.mark.parametrize("fault", ["restart", "sigstop"])
def test_redis_fault_under_invalidation_traffic_gives_no_stale_read(traffic, fault):
    """A writer renames category 1 and publishes, in a loop; lookups sent after a publish
    returned must read that version or a newer one. Meanwhile the stream's Redis is
    restarted (twice) or frozen (SIGSTOP 3 s)."""
    engine, server, nodes, log = (traffic[k] for k in ("engine", "server", "nodes", "log"))
    row = TABLE.row(
        f"Redis {'restart' if fault == 'restart' else 'SIGSTOP 3 s'} under invalidations"
    )
    app = nodes.app
    published = [-1]  # nothing published yet: any name, the seeded one too, is fresh
    stop = threading.Event()
    failures: list[str] = []

    def writer() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            with engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE categories SET name = :n WHERE id = 1"),
                    {"n": f"cat1-v{version}"},
                )
            try:
                publish("categories", [1], log=log)
                published[0] = version
            except Exception as exc:  # the stream is down: the next publish covers it
                failures.append(type(exc).__name__)
            stop.wait(0.02)

    def reader() -> None:
        while not stop.is_set():
            floor = published[0]
            sent = app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1})
            try:
                name = sent.get(timeout=60, interval=0.02)["name"]
            except Exception:
                row.lost += 1
                continue
            row.tries += 1
            if _version_of(name) < floor:
                row.stale += 1
                row.notes.append(f"{time.time():.3f} read {name} after v{floor} was published")
            else:
                row.completed += 1

    threads = [threading.Thread(target=writer, name="faults-writer")] + [
        threading.Thread(target=reader, name=f"faults-reader-{i}") for i in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        if fault == "restart":
            for _ in range(2):
                server.restart(down_for=0.5)
                time.sleep(1.5)
        else:
            os.kill(server.proc.pid, signal.SIGSTOP)
            time.sleep(3.0)
            os.kill(server.proc.pid, signal.SIGCONT)
            time.sleep(2.0)
    finally:
        if fault == "sigstop" and server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGCONT)
        stop.set()
        for thread in threads:
            thread.join(120)
    logs = "\n".join(
        line
        for path in sorted(nodes.folder.glob("worker-*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if "dropping" in line or "listener" in line or "malformed" in line
    )
    assert row.tries > 0 and row.stale == 0 and row.lost == 0, (row, failures[:5], logs[-3000:])


# --- junk and oversize entries -------------------------------------------------------------


JUNK = [
    "{broken",
    '{"v":1,"table":"categories","keys":[1.5]}',
    '{"v":1,"table":"categories","keys":[4],"extra":1}',
    '{"v":1,"table":"categories","keys":["' + "k" * 300 + '"]}',
    '{"v":1,"table":"categories","keys":[' + '"x",' * 2_200_000 + '"y"]}',
]


@pytest.mark.parametrize("where", ["stream", "table"])
def test_junk_and_oversize_entries_never_leave_a_stale_read(traffic, pg_server_url, where):
    """Category 4 is renamed with plain SQL and only a junk entry follows in the log: each
    must still make the workers re-read it (whole-table invalidation or a drop)."""
    engine, nodes = traffic["engine"], traffic["nodes"]
    row = TABLE.row(
        f"junk and oversize entries in the {'Redis stream' if where == 'stream' else 'log table'}"
    )
    env = nodes.env
    if where == "table":  # a worker whose log is the database table
        folder = nodes.folder / "table-log"
        env = make_env(
            folder,
            database_url=pg_server_url,
            broker_url=env["CACHEWORK_BROKER_URL"].rsplit("/", 1)[0] + "/8",
            result_backend=env["CACHEWORK_BROKER_URL"].rsplit("/", 1)[0] + "/8",
            redis_url="off",
        )
        table_nodes = Node(env, folder)
        table_nodes.start()
        app, log = table_nodes.app, DatabaseLog(engine)
    else:
        table_nodes, app, log = None, nodes.app, traffic["log"]
    try:
        for index, junk in enumerate(JUNK):
            row.tries += 1
            for _ in range(4):  # load it in both children
                app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 4}).get(
                    timeout=60
                )
            name = f"junk-{where}-{index}"
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE categories SET name = :n WHERE id = 4"), {"n": name})
            log.append(junk)
            names = {
                app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 4}).get(
                    timeout=60
                )["name"]
                for _ in range(8)
            }
            if names == {name}:
                row.completed += 1
            else:
                row.stale += 1
    finally:
        if table_nodes is not None:
            table_nodes.close()
    assert row.stale == 0, row


# --- the bad-input matrix ------------------------------------------------------------------


HUGE = "x" * 1_000_000
# Every task the workers register (tasks/*.py); each also gets a call with an unknown
# keyword argument (a client's typo), which used to be a TypeError with a traceback.
TASK_NAMES = [
    "cachework.import_versions",
    "cachework.sync_cache",
    "cachework.sync_project_cache",
    "cachework.sync_cache_summary",
    "cachework.delete_cache",
    "cachework.process_invalidation",
    "cachework.invalidation_probe",
    "cachework.lookup",
    "cachework.cache_status",
    "cachework.ping",
]
# (task name, kwargs[, args])
BAD_TASKS: list[tuple] = [
    ("cachework.import_versions", {"models": ["Nope"]}),
    ("cachework.import_versions", {"models": "Product"}),
    ("cachework.import_versions", {"user": "a\x00b"}),
    ("cachework.import_versions", {"comment": HUGE}),
    ("cachework.import_versions", {"remote_addr": HUGE}),
    ("cachework.import_versions", {"dry_run": "yes"}),
    ("cachework.import_versions", {"max_changes": -1}),
    ("cachework.import_versions", {"modles": HUGE}),
    ("cachework.import_versions", {}, [["Product"], "u", "r", "c", True, 1, 2, 3, 4, 5, 6]),
    ("cachework.sync_cache", {"project": "not-a-uuid"}),
    ("cachework.sync_cache", {"project": HUGE}),
    ("cachework.sync_cache", {"app_name": "ghost"}),
    ("cachework.sync_cache", {"name": 7}),
    ("cachework.sync_cache", {"user": HUGE}),
    ("cachework.sync_project_cache", {"project": "not-a-uuid"}),
    ("cachework.sync_project_cache", {"project": HUGE}),
    ("cachework.sync_project_cache", {"app_name": "ghost"}),
    ("cachework.sync_project_cache", {"name": [HUGE]}),
    ("cachework.sync_project_cache", {"user": "a\x00b"}),
    ("cachework.sync_project_cache", {"missing_ok": "yes"}),
    ("cachework.sync_cache_summary", {}),
    ("cachework.sync_cache_summary", {"results": "x"}),
    ("cachework.sync_cache_summary", {"results": [{"updated": "1"}]}),
    ("cachework.sync_cache_summary", {"results": [HUGE]}),
    ("cachework.delete_cache", {"project": "\x00"}),
    ("cachework.delete_cache", {"app_name": HUGE}),
    ("cachework.delete_cache", {"project": 5}),
    ("cachework.process_invalidation", {}),
    ("cachework.process_invalidation", {"table": "nope"}),
    ("cachework.process_invalidation", {"table": HUGE}),
    ("cachework.process_invalidation", {"table": "categories", "keys": [1.5]}),
    ("cachework.process_invalidation", {"table": "categories", "keys": "1"}),
    ("cachework.process_invalidation", {"table": "categories", "keys": [HUGE]}),
    ("cachework.process_invalidation", {"table": "categories", "project": "a\x00"}),
    ("cachework.process_invalidation", {"table": "categories", "names": [HUGE]}),
    ("cachework.invalidation_probe", {"since": "garbage"}),
    ("cachework.invalidation_probe", {"since": HUGE}),
    ("cachework.invalidation_probe", {"since": [1]}),
    ("cachework.invalidation_probe", {"since": -5}),
    ("cachework.lookup", {"table": "nope", "key": 1}),
    ("cachework.lookup", {"table": "categories", "key": HUGE}),
    ("cachework.lookup", {"table": "categories", "key": [1]}),
    ("cachework.lookup", {"table": "categories"}),
    ("cachework.lookup", {}, ["categories", 1, 2]),
    ("cachework.cache_status", {}, [HUGE]),
    ("cachework.cache_status", {HUGE: 1}),
    ("cachework.ping", {"hold": -1}),
    ("cachework.ping", {"hold": 100}),
    ("cachework.ping", {"hold": "yes"}),
    ("cachework.ping", {"hold": True}),
    ("cachework.ping", {"hold": HUGE}),
    *((name, {"modles": ["Product"]}) for name in TASK_NAMES),
]
# Run in this process (CliRunner): a 1 MB value does not fit in a command line (128 KB
# per argument). None of these may start a job: each is refused before it runs.
BAD_COMMANDS = [
    ["import-versions", "--model", "Nope"],
    ["import-versions", "--model", HUGE],
    ["import-versions", "--user", "a\x00b"],
    ["import-versions", "--comment", HUGE],
    ["import-versions", "--remote-addr", HUGE],
    ["import-versions", "--max-changes", "-1"],
    ["import-versions", "--max-changes", "ten"],
    ["import-versions", "--enqueue", "--timeout", "-1"],
    ["import-versions", "--enqueue", "--timeout", "nan"],
    ["import-versions", "--enqueue", "--model", "Nope"],
    ["import-versions", "--enqueue", "--comment", HUGE],
    ["import-versions", "--bogus"],
    ["sync-cache", "-p", "not-a-uuid"],
    ["sync-cache", "-a", "ghost"],
    ["sync-cache", "-n", "nope"],
    ["sync-cache", "--user", HUGE],
    ["sync-cache", "--enqueue", "-p", HUGE],
    ["sync-cache", "--enqueue", "--timeout", "0"],
    ["sync-cache", "extra"],
    ["delete-cache", "-a", "ghost"],
    ["delete-cache", "-p", HUGE],
    ["delete-cache", "--enqueue", "-p", "xyz"],
    ["delete-cache", "--enqueue", "--timeout", "inf"],
    ["invalidate"],
    ["invalidate", "nope"],
    ["invalidate", "categories", "x"],
    ["invalidate", HUGE],
    ["invalidate", "categories", "-p", "a\x00"],
    ["invalidate", "categories", "-n", HUGE],
    ["invalidate", "nope", "--enqueue"],
    ["invalidate", "categories", "1", "--enqueue", "--timeout", "-1"],
    ["initdb", "extra"],
    ["initdb", "--bogus"],
    ["status", "--timeout", "-1"],
    ["status", "--timeout", "abc"],
    ["status", "--timeout", "nan"],
    ["health", "--timeout", "-5"],
    ["health", "--liveness", "--timeout", "0"],
    ["health", "--timeout", HUGE],
    ["db", "nope"],
    ["db", "current", "extra"],
    ["db", "upgrade", "--bogus"],
    ["db", "history", "extra"],
    ["seed", "--projects", "0"],
    ["seed", "--products", "-1"],
    ["seed", "--products", "abc"],
    ["triggers", "nope"],
    ["triggers", "install", "extra"],
    ["triggers", "status", "--bogus"],
    ["demo", "--folder", "demo\x00x"],
    ["nope"],
    ["--bogus"],
]
# Run as a subprocess with a time limit: accepted by mistake, these would start a worker
# (in `worker`, on the suite's broker) or the whole demo (in a folder of the test's own).
BAD_SUBPROCESS_COMMANDS = [
    ["worker", "-c", "abc"],
    ["worker", "-P", "nope"],
    ["worker", "--loglevel", "LOUD"],
    ["demo", "--projects", "0"],
    ["demo", "--products", "2"],
    ["demo", "--projects", "abc"],
    ["demo", "--folder", "{file}"],
]


def _written(engine: sa.Engine, log: RedisLog) -> tuple:
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in (
                "cache_items",
                "transaction",
                "products_version",
                "invalidation_outbox",
                "products",
                "projects",
            )
        )
    return (*counts, log.state().head)


def _call(entry: tuple) -> tuple[str, dict, list]:
    name, kwargs, *rest = entry
    return name, kwargs, rest[0] if rest else []


def _shown(kwargs: dict, args: list) -> str:
    return json.dumps({"args": args, "kwargs": kwargs})[:80]


STORED_MAX = 16_000  # bytes of a failed call's stored result (meta, args and kwargs)


def _worker_lines(nodes: Node, task_id: str) -> list[str]:
    """The worker log's lines that name `task_id`, and any traceback line right after."""
    found: list[str] = []
    for node in nodes.nodes:
        lines = node.logfile.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if task_id in line:
                found.append(line)
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if following.startswith("Traceback"):
                    found.append(following)
    return found


def _log_problem(nodes: Node, task_id: str) -> str | None:
    """None if the worker logged the failure of `task_id` as one WARNING line ("raised
    expected", no traceback, bounded), else what it logged."""
    said: list[str] = []

    def logged() -> bool:  # the worker logs the failure just after storing its result
        said[:] = _worker_lines(nodes, task_id)
        return any("raised" in line for line in said)

    with contextlib.suppress(AssertionError):  # said is what it logged, if anything
        wait_until(logged, timeout=10, every=0.1)
    raised = [line for line in said if "raised" in line]
    expected = [line for line in raised if " WARNING " in line and "raised expected" in line]
    if len(raised) != 1 or len(expected) != 1 or any("Traceback" in x for x in said):
        return f"log {said[-3:]}"
    if len(expected[0]) > MESSAGE_MAX + 300:
        return f"a log line of {len(expected[0])} characters"
    return None


def test_bad_input_over_every_task_is_one_line_and_writes_nothing(traffic):
    """Every task, sent by name as any client does: each bad call fails with one line (in
    its result and as one WARNING line in the worker log, no traceback), stores a bounded
    result (a long argument cut, short ones kept as sent), and nothing is written."""
    engine, nodes, log = traffic["engine"], traffic["nodes"], traffic["log"]
    row = TABLE.row(f"bad input: every task ({len(TASK_NAMES)} tasks, {len(BAD_TASKS)} calls)")
    backend = redis.Redis.from_url(nodes.env["CACHEWORK_RESULT_BACKEND"])
    before = _written(engine, log)
    try:
        for entry in BAD_TASKS:
            name, kwargs, args = _call(entry)
            row.tries += 1
            result = nodes.app.send_task(name, args=args, kwargs=kwargs)
            with pytest.raises(Exception) as caught:
                result.get(timeout=60, interval=0.05)
            message = str(caught.value)
            stored = backend.get(f"celery-task-meta-{result.id}") or b""
            meta = json.loads(stored) if stored else {}
            problems = []
            if "\n" in message or len(message) > MESSAGE_MAX + 40:
                problems.append(f"message of {len(message)} characters")
            if result.state != "FAILURE" or not caught.type.__name__.endswith("Error"):
                problems.append(f"{result.state} {caught.type.__name__}")
            if not stored or len(stored) > STORED_MAX:
                problems.append(f"stored result of {len(stored)} bytes")
            small = len(json.dumps([args, kwargs])) < 200
            if small and (meta.get("kwargs"), meta.get("args")) != (kwargs, args):
                problems.append(f"stored request {meta.get('args')} {meta.get('kwargs')}")
            logged = _log_problem(nodes, result.id)
            if logged is not None:
                problems.append(logged)
            if problems:
                row.notes.append(f"{name} {_shown(kwargs, args)}: {problems} {message[:100]}")
            else:
                row.completed += 1
    finally:
        backend.close()
    if _written(engine, log) != before:
        row.partial += 1
    assert row.completed == row.tries and row.partial == 0, row.notes


def _line_of(output: str, code: int) -> str | None:
    """The problem with a refused command's output and exit status, or None: exit status
    2 and one line `error: ...`, naming the command's help when click refused it."""
    lines = output.strip().splitlines()
    if code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit {code}: {output[:200]!r}"
    if len(lines[0]) > MESSAGE_MAX + 80:
        return f"a line of {len(lines[0])} characters"
    return None


def test_bad_input_over_every_command_is_one_line_and_writes_nothing(
    traffic, monkeypatch, tmp_path
):
    import worker
    from worker import celery_app
    from worker.cli import main

    engine, nodes, log = traffic["engine"], traffic["nodes"], traffic["log"]
    commands = {args[0] for args in BAD_COMMANDS + BAD_SUBPROCESS_COMMANDS} - {"nope", "--bogus"}
    row = TABLE.row(
        f"bad input: every CLI command ({len(commands)} commands, "
        f"{len(BAD_COMMANDS) + len(BAD_SUBPROCESS_COMMANDS)} calls)"
    )
    for name, value in nodes.env.items():
        if name.startswith("CACHEWORK_"):
            monkeypatch.setenv(name, value)
    before = _written(engine, log)
    for args in BAD_COMMANDS:
        row.tries += 1
        monkeypatch.delitem(worker.__dict__, "app", raising=False)
        monkeypatch.delitem(celery_app.__dict__, "app", raising=False)
        try:
            result = CliRunner().invoke(main, args, prog_name="cachework")
        finally:
            app = celery_app.__dict__.pop("app", None)
            if app is not None:  # made by an --enqueue command
                app.runtime.close()
                app.close()
        problem = _line_of(result.output, result.exit_code)
        if problem is None:
            row.completed += 1
        else:
            row.notes.append(f"{[a[:20] for a in args[:4]]}: {problem}")

    exe = Path(sys.executable).parent / "cachework"
    cachework = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from worker.cli import main; main(prog_name='cachework')"]
    )
    not_a_demo = tmp_path / "not-a-demo"
    not_a_demo.write_text("a file of the test's own; the demo must not replace it\n")
    demo_folder = tmp_path / "demo"
    for args in BAD_SUBPROCESS_COMMANDS:
        row.tries += 1
        argv = [a.format(file=not_a_demo) for a in args]
        if argv[0] == "demo" and "--folder" not in argv:
            argv += ["--folder", str(demo_folder)]
        proc = subprocess.Popen(
            [*cachework, *argv],
            env=nodes.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # accepted: a worker or the demo is running
            kill_group(proc.pid)
            output, _ = proc.communicate(timeout=30)
        problem = _line_of(output, proc.returncode)
        if problem is None:
            row.completed += 1
        else:
            row.notes.append(f"{argv[:3]}: {problem}")
    replaced = not not_a_demo.is_file()
    if _written(engine, log) != before or demo_folder.exists() or replaced:
        row.partial += 1
    assert row.completed == row.tries and row.partial == 0, row.notes
