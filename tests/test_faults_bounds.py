"""Fault suite row (issue 18, defect 7): oversized arguments and results of every task.

Every task of the workers (the public ones and the internal `sync_project_cache`,
`rebuild_changed`, `sync_cache_summary`, `invalidation_probe`, `ping`), sent by name as any
client does, with a 6 MB argument, through a real prefork worker whose results go to
Redis. Each call must end in a result (a one-line error naming the argument, or a result
of its usual shape) whose stored entry is under STORED_MAX; a refused call writes nothing.
A call whose stored result and arguments exceed the bound counts as partial; one with no
result, lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from cachework import database as db
from cachework.errors import MESSAGE_MAX
from cachework.settings import load_settings
from cachework.worker.task_base import STORED_MAX
from demo.seed import seed
from tests.conftest import MODELS, make_env
from tests.fault_helpers import TABLE

pytestmark = pytest.mark.faults

BIG = "A" * 6_000_000
TASKS = {
    "cachework.import_versions",
    "cachework.sync_cache",
    "cachework.sync_project_cache",
    "cachework.rebuild_changed",
    "cachework.sync_cache_summary",
    "cachework.delete_cache",
    "cachework.process_invalidation",
    "cachework.invalidation_probe",
    "cachework.lookup",
    "cachework.cache_status",
    "cachework.ping",
}
# (task, kwargs, args): each is refused with one line and writes nothing.
REFUSED: list[tuple[str, dict, list]] = [
    ("cachework.import_versions", {"comment": BIG}, []),
    ("cachework.import_versions", {"models": [BIG]}, []),
    ("cachework.sync_cache", {"project": BIG}, []),
    ("cachework.sync_cache", {"user": BIG}, []),
    ("cachework.sync_project_cache", {"project": BIG}, []),
    ("cachework.sync_project_cache", {"name": BIG}, []),
    ("cachework.rebuild_changed", {"project": BIG}, []),
    ("cachework.rebuild_changed", {"names": [BIG]}, []),
    (
        "cachework.sync_cache_summary",
        {"results": [{"updated": 1, "projects": 1, "errors": [BIG]}]},
        [],
    ),
    ("cachework.sync_cache_summary", {}, [[{"updated": 0, "projects": 0, "errors": []}, BIG]]),
    ("cachework.delete_cache", {"project": BIG}, []),
    ("cachework.delete_cache", {"app_name": BIG}, []),
    ("cachework.process_invalidation", {"table": BIG}, []),
    ("cachework.process_invalidation", {"table": "categories", "names": [BIG]}, []),
    ("cachework.process_invalidation", {"table": "categories", "keys": [BIG]}, []),
    ("cachework.invalidation_probe", {"since": BIG}, []),
    ("cachework.lookup", {"table": "categories", "key": BIG}, []),
    ("cachework.lookup", {"table": BIG, "key": 1}, []),
    ("cachework.cache_status", {}, [BIG]),
    ("cachework.ping", {"hold": BIG}, []),
]
MANY_ERRORS = [
    {"updated": 1, "projects": 1, "errors": [f"project {i}: " + "e" * 3000]} for i in range(2000)
]
# Accepted: large but valid. They run; what they store is cut, their result keeps its shape.
ACCEPTED: list[tuple[str, dict, list]] = [
    ("cachework.sync_cache_summary", {"results": MANY_ERRORS}, []),
    ("cachework.process_invalidation", {"table": "categories", "keys": list(range(10_000))}, []),
]


@pytest.fixture(scope="module")
def bounds_env(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    from cachework.worker import create_app
    from cachework.worker.schema import create_tables
    from cachework.worker.spawn import WorkerProcess

    engine = sa.create_engine(pg_server_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    database = db.Database(pg_server_url)
    create_tables(database.engine, MODELS)
    with database.session() as session:
        seed(session, projects=2, products=20)
    database.dispose()
    url = redis_server_url.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    folder = tmp_path_factory.mktemp("faults-bounds")
    env = make_env(folder, database_url=pg_server_url, broker_url=url, result_backend=url)
    env["CACHEWORK_REDIS_URL"] = url
    app = create_app(load_settings(env))
    node = WorkerProcess(
        env, concurrency=2, name=f"bounds{time.monotonic_ns()}@127.0.0.1", logfile=folder / "w.log"
    ).start()
    try:
        node.wait_ready(app, timeout=90)
        yield {"app": app, "redis": client, "engine": engine}
    finally:
        node.stop()
        app.runtime.close()
        app.close()
        client.flushdb()
        client.close()
        engine.dispose()


def _written(engine: sa.Engine, client: redis.Redis) -> tuple:
    """What a job could have written: our tables and the app's, and the invalidation log."""
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("cache_items", "transaction", "products_version", "invalidation_outbox")
        )
    streams = tuple(client.xlen(k) for k in sorted(client.scan_iter(_type="stream")))
    return (*counts, streams)


def _problems(app, client: redis.Redis, entry: tuple, refused: bool) -> list[str] | None:
    """What is wrong with one call's outcome ([] if nothing), or None if it had no result."""
    name, kwargs, args = entry
    sent = app.send_task(name, args=args, kwargs=kwargs)
    problems: list[str] = []
    try:
        value = sent.get(timeout=60, interval=0.05)
    except TimeoutError:
        return None
    except Exception as exc:
        message = str(exc)
        if not refused:
            problems.append(f"refused: {message[:100]}")
        if "\n" in message or len(message) > MESSAGE_MAX:
            problems.append(f"a message of {len(message)} characters")
    else:
        if refused:
            problems.append(f"accepted: {str(value)[:100]}")
        elif name == "cachework.sync_cache_summary" and (
            value["updated"] != 2000 or not value["errors"][-1].endswith("more errors left out")
        ):
            problems.append(f"shape {str(value)[:100]}")
    stored = client.strlen(f"celery-task-meta-{sent.id}")
    if stored > STORED_MAX:
        problems.append(f"stored {stored} bytes")
    return problems


def test_oversized_arguments_and_results_of_every_task(bounds_env):
    app, client, engine = bounds_env["app"], bounds_env["redis"], bounds_env["engine"]
    assert {name for name, _kwargs, _args in REFUSED + ACCEPTED} == TASKS
    from cachework import tasks  # noqa: F401 - registers every task: the calls cover them all

    assert {n for n in app.tasks if n.startswith("cachework.")} == TASKS
    row = TABLE.row(
        f"oversized arguments and results of every task ({len(TASKS)} tasks, "
        f"{len(REFUSED) + len(ACCEPTED)} calls of up to 6 MB)"
    )
    before = _written(engine, client)
    for refused, entries in ((True, REFUSED), (False, ACCEPTED)):
        for entry in entries:
            row.tries += 1
            problems = _problems(app, client, entry, refused)
            if problems is None:
                row.lost += 1
                row.notes.append(f"{entry[0]}: no result in 60 s")
            elif problems:
                row.partial += any(p.startswith("stored") for p in problems)
                row.notes.append(f"{entry[0]} {list(entry[1])}: {problems}")
            else:
                row.completed += 1
        if refused and _written(engine, client) != before:
            row.partial += 1
            row.notes.append("a refused call wrote something")
    assert row.completed == row.tries and (row.lost, row.partial) == (0, 0), row.notes
