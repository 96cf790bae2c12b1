"""A second delivery of a job still running is harmless (issue 12, item 3).

A Redis broker hands a message out again when it has been unacknowledged for longer than
the visibility timeout (tasks acknowledge late), found by the transport's periodic sweep
(`CACHEWORK_BROKER_RESTORE_INTERVAL`). A job that runs longer than that is delivered a
second time WHILE it runs. This test makes it happen for real: a prefork worker, a Redis
broker of the run's own (db 9, which no other test uses), a PostgreSQL database of its own,
visibility timeout 10 s (the minimum) and a sweep every second; a rebuild held 16 s by the
`recorder` plugin and a version import stalled inside its write (a trigger waits for an
advisory lock this test holds) both outlive the timeout. The worker log shows each task id
received twice before its first run finished, and then:

- the rebuild: the second delivery (marked `redelivered`) does not defer to the scope's
  lock, it waits for the holder (on Redis both deliveries share one delivery tag, so
  acknowledging the second would drop the broker's record of the first); the holder folds
  it in as one more round in its own process (the lock cannot tell a duplicate from a
  change made after its read, so it redoes the scope once); the second delivery then
  finds nothing to do (`updated: 0`, no plugin run); no two rounds overlap, the item ends
  current, nothing failed, no names are left dirty or taken;
- the import: the second delivery finds the import lock held (`LockedError`, retried
  with backoff); the first run commits one Continuum transaction; the retry finds nothing
  to do (no transaction); nothing is left to import and no version lacks its transaction.

And when the holder's whole worker dies while the second delivery waits (on another
node), the second delivery takes the scope once the dead holder's lock runs out and
rebuilds what the holder had taken: nothing is lost.
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.items import store
from cachework.cache.items.locks import PREFIX, scope_key
from cachework.settings import load_settings
from demo.seed import project_uuid, seed
from tests.conftest import MODELS, PG_ADMIN_URL, RUN_ID, _pg_admin, make_env, unavailable
from tests.project_cache_helpers import HOLD_KEY, intervals_key, price_total, started_key

REDIS_DB = 9  # no other test uses it (test_faults: 5-8, the rest: 0)
VISIBILITY = 10  # seconds: the minimum CACHEWORK_BROKER_VISIBILITY_TIMEOUT
RESTORE = 1  # seconds between the transport's sweeps
HOLD = 16.0  # the rebuild's first round: past VISIBILITY + RESTORE, with a margin
STALL_KEY = (727, 12)  # advisory lock the stalled import waits for (held by the test)
DEADLINE = 60.0  # bound on the whole scenario

STALL = f"""
CREATE OR REPLACE FUNCTION redelivery_stall() RETURNS trigger AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared({STALL_KEY[0]}, {STALL_KEY[1]}); RETURN NULL; END
$$ LANGUAGE plpgsql;
CREATE TRIGGER redelivery_stall BEFORE INSERT ON products_version
FOR EACH STATEMENT EXECUTE FUNCTION redelivery_stall();
"""


@pytest.fixture
def redelivery(redis_server_url: str, tmp_path: Path) -> Iterator[dict]:
    """Redis db 9 of the run's redis-server (it must be empty; flushed at the end:
    everything in it is then this test's), a PostgreSQL database of its own (dropped at
    the end), a worker environment."""
    from cachework.worker.schema import create_tables

    url = redis_server_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    if client.dbsize():
        client.close()
        pytest.fail(f"Redis db {REDIS_DB} is not empty: another run is using it")
    name = f"cachework_redelivery_{RUN_ID}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        client.close()
        unavailable("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(f"{base}/{name}", poolclass=sa.pool.NullPool)
    try:
        create_tables(engine, MODELS)
        with sa.orm.Session(engine) as session, session.begin():
            seed(session, projects=2, products=400)
        env = make_env(
            tmp_path,
            database_url=f"{base}/{name}",
            broker_url=url,
            result_backend=url,
            redis_url=url,
            models="demo.models,tests.project_cache_helpers",
            cache_lock_ttl_ms="2000",
            broker_visibility_timeout=str(VISIBILITY),
            broker_restore_interval=str(RESTORE),
        )
        yield {"engine": engine, "redis": client, "env": env, "folder": tmp_path}
    finally:
        client.flushdb()
        client.close()
        engine.dispose()
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Log:
    """The worker's log: Celery's lines about one task id."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self, task_id: str, what: str) -> list[str]:
        if not self.path.exists():
            return []
        pattern = re.compile(rf"\[{re.escape(task_id)}\].*\b{what}\b")
        return [
            line for line in self.path.read_text(errors="replace").splitlines()
            if pattern.search(line)
        ]  # fmt: skip

    def received(self, task_id: str) -> int:
        return len(self.lines(task_id, "received"))

    def results(self, task_id: str) -> list[dict]:
        """The result each run of `task_id` logged ("succeeded in 0.1s: {...}")."""
        return [
            ast.literal_eval(line.split("s: ", 1)[1])
            for line in self.lines(task_id, "succeeded")
        ]  # fmt: skip


def _stalled(engine: sa.Engine) -> bool:
    """An import waits in the stall trigger for the test's advisory lock."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid = :a AND objid = :b AND objsubid = 2"
                ),
                {"a": STALL_KEY[0], "b": STALL_KEY[1]},
            ).scalar_one()
        )


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def _wait(predicate, what: str, until: float, logfile: Path):
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > until:
            tail = logfile.read_text(errors="replace")[-4000:] if logfile.exists() else ""
            raise AssertionError(f"{what}: not within the deadline\nworker log:\n{tail}")
        time.sleep(0.1)


def _pending_changes(engine: sa.Engine) -> int:
    """What an import would still write (a dry run in this process)."""
    from cachework.importers.versions import import_versions

    with sa.orm.Session(engine) as session:
        result = import_versions(session, MODELS.versioned, dry_run=True).as_dict()
        session.rollback()
    return sum(c["created"] + c["updated"] + c["deleted"] for c in result["models"].values())


def _stall(holder: sa.Connection, on: bool) -> None:
    fn = "pg_advisory_lock" if on else "pg_advisory_unlock"
    holder.execute(sa.text(f"SELECT {fn}(:a, :b)"), {"a": STALL_KEY[0], "b": STALL_KEY[1]})


def _assert_rebuilt_and_released(engine: sa.Engine, client: redis.Redis, project: str) -> None:
    """The item holds the sum of the data now, and no lock, dirty or taken key is left."""
    with sa.orm.Session(engine) as session:
        item = store.get_item(session, "recorder", "total", project=project)
        assert item is not None and item.data == {"sum": price_total(session, project)}
    key = scope_key(project, "recorder")
    for kind in ("lock", "dirty", "taken"):
        assert not client.exists(f"{PREFIX}:{kind}:{key}"), kind


def _delivered_again_while_running(
    log: Log, client: redis.Redis, engine: sa.Engine, project: str, sent: tuple, wait
) -> tuple[float, float]:
    """The broker delivers both messages again while their first runs still run: the
    seconds after sending at which the rebuild and the import came again."""
    rebuild, imported, sent_at = sent
    wait(lambda: log.received(rebuild.id) >= 2, "a second delivery of the rebuild")
    rebuild_again = time.monotonic() - sent_at
    # The second delivery waits for the first (a deferral would have logged its result
    # within a renewal of the holder's lock, 2/3 s); the round it folds in need not hold.
    time.sleep(2.0)
    assert log.results(rebuild.id) == [], "the second delivery deferred, it must wait"
    client.set(HOLD_KEY, "0.2")
    assert client.llen(intervals_key(project)) == 0, "the first round ended too early"
    wait(lambda: log.received(imported.id) >= 2, "a second delivery of the import")
    import_again = time.monotonic() - sent_at
    wait(lambda: log.lines(imported.id, "retry"), "the second import's retry")
    assert _stalled(engine), "the first import must still be running"
    return rebuild_again, import_again


def _tear_down(engine: sa.Engine, holder: sa.Connection, stall_held: bool, node, app) -> None:
    """Release the stall (if still held), drop its trigger, stop the worker and the app."""
    if stall_held:
        _stall(holder, False)
    holder.close()
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER IF EXISTS redelivery_stall ON products_version"))
    node.stop(timeout=20)
    app.runtime.close()
    app.close()


def _check_the_rebuild(
    log: Log, client: redis.Redis, engine: sa.Engine, project: str, sent: tuple, first_pid: int
) -> None:
    rebuild, rebuild_result = sent
    # The rebuild: two deliveries, both succeeded; the first folded the second in as a
    # second round in its own process, the second waited and found nothing to do.
    runs = log.results(rebuild.id)
    assert log.received(rebuild.id) == 2 and len(runs) == 2, runs
    holding, waited = runs
    assert holding == {"updated": 2, "projects": 1, "errors": []}
    assert waited == {"updated": 0, "projects": 1, "errors": []}
    assert rebuild_result == holding  # the first result stored for the task id stays
    rounds = [json.loads(r) for r in client.lrange(intervals_key(project), 0, -1)]
    assert [pid for _start, _end, pid in rounds] == [first_pid, first_pid], rounds
    assert rounds[0][1] <= rounds[1][0], rounds  # one after the other, never at once
    assert [int(p) for p in client.lrange(started_key(project), 0, -1)] == [first_pid] * 2
    _assert_rebuilt_and_released(engine, client, project)


def _check_the_import(log: Log, engine: sa.Engine, sent: tuple, transactions_before: int) -> None:
    imported, import_result = sent
    # The import: its second delivery found the import lock held and was retried; the
    # first run wrote one transaction; the retry that got through found nothing to do.
    retries = log.lines(imported.id, "retry")
    assert retries and all("LockedError" in line for line in retries), retries
    import_runs = log.results(imported.id)
    assert import_result["transaction_id"] is not None and import_result in import_runs
    assert sorted(r["transaction_id"] is None for r in import_runs) == [False] + [True] * (
        len(import_runs) - 1
    ), import_runs
    assert _count(engine, "SELECT count(*) FROM transaction") - transactions_before == 1
    orphans = _count(
        engine,
        "SELECT count(*) FROM products_version v LEFT JOIN transaction t "
        "ON t.id = v.transaction_id WHERE t.id IS NULL",
    )
    assert orphans == 0
    assert _pending_changes(engine) == 0


def test_a_second_delivery_of_a_running_rebuild_and_import_is_harmless(redelivery):
    from cachework.worker import create_app
    from cachework.worker.spawn import WorkerProcess

    engine, client = redelivery["engine"], redelivery["redis"]
    env, folder = redelivery["env"], redelivery["folder"]
    project = project_uuid(0)
    logfile = folder / "worker.log"
    log = Log(logfile)
    app = create_app(load_settings(env))
    node = WorkerProcess(env, concurrency=4, name=f"redelivery{RUN_ID}@127.0.0.1", logfile=logfile)
    holder = engine.connect()  # holds the advisory lock the stalled import waits for
    stall_held = False

    def wait(predicate, what: str):
        return _wait(predicate, what, until, logfile)

    try:
        node.start()
        node.wait_ready(app, timeout=90)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE products SET price = price + 1"))
            conn.execute(sa.text(STALL))
        _stall(holder, True)
        stall_held = True
        transactions_before = _count(engine, "SELECT count(*) FROM transaction")
        client.set(HOLD_KEY, str(HOLD))
        until = time.monotonic() + DEADLINE

        rebuild = app.send_task(
            "cachework.sync_cache", kwargs={"project": project, "app_name": "recorder"}
        )
        imported = app.send_task("cachework.import_versions", kwargs={"user": "redelivery"})
        sent_at = time.monotonic()
        first_pid = int(wait(lambda: client.lindex(started_key(project), 0), "the rebuild"))
        wait(lambda: _stalled(engine), "the import's stall")

        rebuild_again, import_again = _delivered_again_while_running(
            log, client, engine, project, (rebuild, imported, sent_at), wait
        )
        _stall(holder, False)
        stall_held = False

        rebuild_result = rebuild.get(timeout=max(1.0, until - time.monotonic()), interval=0.2)
        import_result = imported.get(timeout=max(1.0, until - time.monotonic()), interval=0.2)
        # The second delivery's retries: the next one finds nothing to do.
        wait(lambda: len(log.results(imported.id)) >= 2, "the retried import")
    finally:
        _tear_down(engine, holder, stall_held, node, app)

    text = logfile.read_text(errors="replace")
    print(f"\nrebuild {rebuild.id}: delivered again after {rebuild_again:.1f}s")
    print(f"import {imported.id}: delivered again after {import_again:.1f}s")
    print("\n".join(x for x in text.splitlines() if rebuild.id in x or imported.id in x))
    assert "Traceback" not in text and "ERROR" not in text, text[-4000:]
    _check_the_rebuild(log, client, engine, project, (rebuild, rebuild_result), first_pid)
    _check_the_import(log, engine, (imported, import_result), transactions_before)


def test_a_second_delivery_finishes_the_rebuild_of_a_worker_that_died(redelivery):
    """The holder's node (one child, so the broker gives the second delivery to the other
    node) is SIGKILLed while the second delivery waits for it: the second delivery takes
    the scope when the dead holder's lock runs out and rebuilds. Deferring instead would
    have acknowledged the only record of the message, and the change would be lost."""
    from cachework.worker import create_app
    from cachework.worker.spawn import WorkerProcess
    from tests.fault_helpers import kill_group

    engine, client = redelivery["engine"], redelivery["redis"]
    env, folder = redelivery["env"], redelivery["folder"]
    project = project_uuid(1)
    app = create_app(load_settings(env))
    logs = {n: folder / f"worker-{n}.log" for n in ("a", "b")}
    nodes = {
        n: WorkerProcess(env, concurrency=1, name=f"redeliver{n}{RUN_ID}@127.0.0.1", logfile=f)
        for n, f in logs.items()
    }
    until = time.monotonic() + DEADLINE
    try:
        nodes["a"].start()
        nodes["a"].wait_ready(app, timeout=90)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE products SET price = price + 1"))
        client.set(HOLD_KEY, "40")  # the first round outlives the test's patience
        rebuild = app.send_task(
            "cachework.sync_cache", kwargs={"project": project, "app_name": "recorder"}
        )
        first_pid = int(
            _wait(lambda: client.lindex(started_key(project), 0), "the rebuild", until, logs["a"])
        )
        nodes["b"].start()
        nodes["b"].wait_ready(app, timeout=90)
        log_b = Log(logs["b"])
        _wait(lambda: log_b.received(rebuild.id), "the second delivery on b", until, logs["b"])
        time.sleep(2.0)
        assert log_b.results(rebuild.id) == [], "the second delivery deferred, it must wait"
        client.set(HOLD_KEY, "0.2")
        kill_group(nodes["a"].proc.pid)  # the holder's whole worker, mid-round
        runs = _wait(lambda: log_b.results(rebuild.id), "the second delivery", until, logs["b"])
    finally:
        for node in nodes.values():
            node.stop(timeout=20)
        app.runtime.close()
        app.close()

    assert runs == [{"updated": 1, "projects": 1, "errors": []}], runs
    pids = [int(p) for p in client.lrange(started_key(project), 0, -1)]
    assert pids[0] == first_pid and len(pids) == 2 and pids[1] != first_pid, pids
    _assert_rebuilt_and_released(engine, client, project)
    assert "Traceback" not in logs["b"].read_text(errors="replace")
