"""Fault suite rows for the invalidation log's input (issue 18, items 6 and 8), against real
prefork workers (2 children a node) on a Redis of the module's own (broker, results, and
the stream where one is used):

- a row with a forged id in the database log table (PostgreSQL: `INSERT ... OVERRIDING
  SYSTEM VALUE`; SQLite: a row's id moved above its AUTOINCREMENT counter), refused by
  the database, then written past the refusal (triggers off, as in a restore or on a
  replica), before the workers start, after they start but before their first read, and
  after it;
- an event with a key twice (`"table"` or `"keys"`) in the Redis stream and in the
  database log table.

A lookup is stale when it was sent after the rename's invalidation was processed (the
`process_invalidation` task returned, or the entry was in the log) and reads the old name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import DatabaseLog, RedisLog
from cachework.schema import SQLITE_FIXED_IDS, SQLITE_TRIGGERS, ddl
from cachework.settings import load_settings
from demo.seed import seed
from tests.conftest import MODELS, make_env
from tests.fault_helpers import TABLE, engine_for
from tests.invalidation_helpers import OwnRedis

pytestmark = pytest.mark.faults

LOOKUPS = 12  # per step: over two children each, at least


class Nodes:
    """Worker nodes of one environment (started one by one), always stopped."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        from cachework.worker import create_app

        self.env, self.folder = env, folder
        self.app = create_app(load_settings(env))
        self.nodes: list = []

    def start(self) -> None:
        from cachework.worker.spawn import WorkerProcess

        node = WorkerProcess(
            self.env,
            concurrency=2,
            name=f"log{len(self.nodes)}@127.0.0.1",
            logfile=self.folder / f"worker-{len(self.nodes)}.log",
        ).start()
        self.nodes.append(node)
        node.wait_ready(self.app, timeout=90)

    def close(self) -> None:
        for node in self.nodes:
            node.stop(timeout=10)
        self.app.runtime.close()
        self.app.close()

    def lookups(self, key: int, count: int = LOOKUPS) -> list[str]:
        sent = [
            self.app.send_task("cachework.lookup", kwargs={"table": "categories", "key": key})
            for _ in range(count)
        ]
        return [result.get(timeout=60, interval=0.02)["name"] for result in sent]

    def logs(self) -> str:
        return "\n".join(
            line
            for path in sorted(self.folder.glob("worker-*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if "invalidation" in line or "dropping" in line
        )


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory) -> Iterator[str]:
    server = OwnRedis(tmp_path_factory.mktemp("faults-log-redis")).start()
    try:
        yield server.url.rsplit("/", 1)[0]
    finally:
        server.stop()


@contextlib.contextmanager
def nodes_on(database_url: str, redis_base: str, folder: Path, stream: bool) -> Iterator[Nodes]:
    url = f"{redis_base}/1"
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = make_env(
        folder,
        database_url=database_url,
        broker_url=url,
        result_backend=url,
        redis_url=f"{redis_base}/2" if stream else "off",
    )
    nodes = Nodes(env, folder)
    try:
        yield nodes
    finally:
        nodes.close()
        client.flushdb()
        client.close()


def _database(kind: str, request, folder: Path) -> tuple[str, sa.Engine]:
    from cachework.worker.schema import create_tables

    url = request.getfixturevalue("pg_url") if kind == "postgresql" else None
    url = url or f"sqlite:///{folder / 'faults.db'}"
    engine = engine_for(url)
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=1, products=20)
    request.addfinalizer(engine.dispose)
    return url, engine


def _rename(engine: sa.Engine, key: int, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE categories SET name = :n WHERE id = :k"), {"n": name, "k": key}
        )


def forge(engine: sa.Engine, data: str) -> None:
    """A row whose id the log's sequence never handed out, far above every id: the
    database refuses it (asserted), so it is written past the refusal as a restore or a
    logical-replication subscriber would (PostgreSQL's triggers off; SQLite's dropped)."""
    for bypass in (False, True):
        try:
            with engine.begin() as conn:
                _forge_in(conn, data, bypass)
        except sa.exc.DBAPIError as exc:
            assert not bypass and "sequence" in str(exc), exc
        else:
            assert bypass, "the database took a forged id"


def _forge_in(conn: sa.Connection, data: str, bypass: bool) -> None:
    top = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM invalidation_log")).scalar()
    if conn.dialect.name == "postgresql":
        if bypass:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            sa.text(
                "INSERT INTO invalidation_log (id, data) OVERRIDING SYSTEM VALUE "
                "VALUES (:id, :data)"
            ),
            {"id": max(9_000_000_000_000, top + 1), "data": data},
        )
        return
    # SQLite refuses explicit ids and moved ids (triggers); an UPDATE past the counter
    if bypass:
        for name in (*SQLITE_TRIGGERS, *SQLITE_FIXED_IDS):
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
    seq = "SELECT seq FROM sqlite_sequence WHERE name = 'invalidation_log'"
    conn.execute(sa.text("INSERT INTO invalidation_log (data) VALUES (:d)"), {"d": data})
    conn.execute(
        sa.text(f"UPDATE invalidation_log SET id = ({seq}) + 1000000000000 WHERE id = ({seq})")
    )
    if bypass:  # and back, for the next attempt
        for statement in (*SQLITE_TRIGGERS.values(), *SQLITE_FIXED_IDS.values()):
            conn.execute(ddl(statement))


def _count(row, names: list[str], fresh: str) -> None:
    row.tries += len(names)
    row.completed += sum(1 for n in names if n == fresh)
    row.stale += sum(1 for n in names if n != fresh)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_a_forged_id_in_the_log_table_never_leaves_a_stale_read(kind, request, own_redis, tmp_path):
    """Forged rows before the first node starts, after the second node starts but before
    its first read, and after every child has read; each followed by a rename and a
    `process_invalidation` task, then lookups across both nodes."""
    row = TABLE.row(
        f"forged id in the log table ({'PostgreSQL' if kind == 'postgresql' else 'SQLite'})"
    )
    url, engine = _database(kind, request, tmp_path)
    log = DatabaseLog(engine)
    log.append('{"v":1,"table":"categories","keys":[9]}')  # the log is not empty
    forged = '{"v":1,"table":"categories","keys":[2]}'
    with nodes_on(url, own_redis, tmp_path / "nodes", stream=False) as nodes:
        forge(engine, forged)  # before the workers start
        nodes.start()
        steps = ["first", "second", "third"]
        for step in steps:
            if step == "second":  # a node started after it, forged before its first read
                nodes.start()
                forge(engine, forged)
            elif step == "third":  # every child has read: forged under running listeners
                forge(engine, forged)
            fresh = f"forged-{kind}-{step}"
            _rename(engine, 1, fresh)
            nodes.app.send_task(
                "cachework.process_invalidation", kwargs={"table": "categories", "keys": [1]}
            ).get(timeout=60)
            _count(row, nodes.lookups(1), fresh)
        assert row.stale == 0, (row, nodes.logs()[-3000:])


DUPLICATES = [
    '{"v":1,"table":"categories","keys":[3],"table":"zzz"}',  # categories, or zzz?
    '{"v":1,"table":"categories","keys":[3],"keys":[5]}',  # key 3, or 5?
]


@pytest.mark.parametrize("where", ["stream", "table"])
def test_duplicate_keys_in_an_event_never_leave_a_stale_read(where, request, own_redis, tmp_path):
    """Category 3 is loaded in every child, renamed with plain SQL, and only an entry with a
    key twice follows in the log: lookups must read the new name."""
    row = TABLE.row(
        f"duplicate keys in an event ({'Redis stream' if where == 'stream' else 'log table'})"
    )
    url, engine = _database("postgresql", request, tmp_path)
    with nodes_on(url, own_redis, tmp_path / "nodes", stream=where == "stream") as nodes:
        nodes.start()
        if where == "stream":
            client = redis.Redis.from_url(f"{own_redis}/2")
            request.addfinalizer(client.close)
            log = RedisLog(client)
        else:
            log = DatabaseLog(engine)
        for index, raw in enumerate(DUPLICATES):
            nodes.lookups(3, count=8)  # loaded in both children
            fresh = f"dup-{where}-{index}"
            _rename(engine, 3, fresh)
            log.append(raw)
            _count(row, nodes.lookups(3), fresh)
        assert row.stale == 0, (row, nodes.logs()[-3000:])
