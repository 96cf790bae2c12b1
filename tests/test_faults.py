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
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from cache import store
from cache.errors import MESSAGE_MAX
from cache.invalidation import DatabaseLog, RedisLog, publish
from cache.settings import load_settings
from demo.seed import project_uuid, seed
from tests.conftest import MODELS, make_env
from tests.fault_helpers import (
    ROOT,
    OwnPostgres,
    Table,
    children_of,
    engine_for,
    kill_group,
    wait_until,
)
from tests.invalidation_helpers import OwnRedis
from tests.project_cache_helpers import HOLD_KEY, price_total, started_key

pytestmark = pytest.mark.faults
TABLE = Table()
REPORT = ROOT / ".cachework" / "faults-report.md"


@pytest.fixture(scope="module", autouse=True)
def _report(request) -> Iterator[None]:
    yield
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"fault suite run of {stamp} (`make faults`)\n\n{TABLE.markdown()}\n"
    REPORT.write_text(text)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for line in text.splitlines():
            reporter.write_line(line)


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
BAD_TASKS = [
    ("cachework.import_versions", {"models": ["Nope"]}),
    ("cachework.import_versions", {"models": "Product"}),
    ("cachework.import_versions", {"user": "a\x00b"}),
    ("cachework.import_versions", {"comment": HUGE}),
    ("cachework.import_versions", {"remote_addr": HUGE}),
    ("cachework.import_versions", {"dry_run": "yes"}),
    ("cachework.import_versions", {"max_changes": -1}),
    ("cachework.sync_cache", {"project": "not-a-uuid"}),
    ("cachework.sync_cache", {"project": HUGE}),
    ("cachework.sync_cache", {"app_name": "ghost"}),
    ("cachework.sync_cache", {"name": 7}),
    ("cachework.sync_cache", {"user": HUGE}),
    ("cachework.delete_cache", {"project": "\x00"}),
    ("cachework.delete_cache", {"app_name": HUGE}),
    ("cachework.process_invalidation", {"table": "nope"}),
    ("cachework.process_invalidation", {"table": HUGE}),
    ("cachework.process_invalidation", {"table": "categories", "keys": [1.5]}),
    ("cachework.process_invalidation", {"table": "categories", "keys": "1"}),
    ("cachework.process_invalidation", {"table": "categories", "keys": [HUGE]}),
    ("cachework.process_invalidation", {"table": "categories", "project": "a\x00"}),
    ("cachework.lookup", {"table": "nope", "key": 1}),
    ("cachework.lookup", {"table": "categories", "key": HUGE}),
    ("cachework.lookup", {"table": "categories", "key": [1]}),
]
BAD_COMMANDS = [
    ["import-versions", "--model", "Nope"],
    ["import-versions", "--user", "a\x00b"],
    ["import-versions", "--comment", HUGE],
    ["sync-cache", "-p", "not-a-uuid"],
    ["sync-cache", "-a", "ghost"],
    ["delete-cache", "-a", "ghost"],
    ["delete-cache", "-p", HUGE],
    ["invalidate", "nope"],
    ["invalidate", "categories", "x"],
    ["invalidate", HUGE],
]


def _written(engine: sa.Engine, log: RedisLog) -> tuple:
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("cache_items", "transaction", "products_version", "invalidation_outbox")
        )
    return (*counts, log.state().head)


def test_bad_input_over_every_task_is_one_line_and_writes_nothing(traffic):
    engine, nodes, log = traffic["engine"], traffic["nodes"], traffic["log"]
    row = TABLE.row("bad input: every task (23 calls)")
    before = _written(engine, log)
    for name, kwargs in BAD_TASKS:
        row.tries += 1
        sent = nodes.app.send_task(name, kwargs=kwargs)
        with pytest.raises(Exception) as caught:
            sent.get(timeout=60, interval=0.05)
        message = str(caught.value)
        one_line = "\n" not in message and len(message) <= MESSAGE_MAX + 40
        if one_line and sent.state == "FAILURE" and caught.type.__name__.endswith("Error"):
            row.completed += 1
        else:
            row.notes.append(f"{name} {json.dumps(kwargs)[:60]}: {message[:100]}")
    if _written(engine, log) != before:
        row.partial += 1
    assert row.completed == row.tries and row.partial == 0, row.notes


def test_bad_input_over_every_command_is_one_line_and_writes_nothing(traffic, monkeypatch):
    import worker
    from worker import celery_app
    from worker.cli import main

    engine, nodes, log = traffic["engine"], traffic["nodes"], traffic["log"]
    row = TABLE.row("bad input: every CLI command (10 calls)")
    for name, value in nodes.env.items():
        if name.startswith("CACHEWORK_"):
            monkeypatch.setenv(name, value)
    before = _written(engine, log)
    for args in BAD_COMMANDS:
        row.tries += 1
        monkeypatch.delitem(worker.__dict__, "app", raising=False)
        monkeypatch.delitem(celery_app.__dict__, "app", raising=False)
        result = CliRunner().invoke(main, args)
        lines = result.output.strip().splitlines()
        if (
            result.exit_code == 2
            and len(lines) == 1
            and lines[0].startswith("error: ")
            and len(lines[0]) <= MESSAGE_MAX + 60
        ):
            row.completed += 1
        else:
            row.notes.append(f"{args[:2]}: {result.exit_code} {result.output[:200]}")
    if _written(engine, log) != before:
        row.partial += 1
    assert row.completed == row.tries and row.partial == 0, row.notes
