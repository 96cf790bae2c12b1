"""Fault suite (marker `faults`): a Redis restart and a SIGSTOP of the invalidation
stream's server under invalidation traffic, and junk and oversize entries in the Redis
stream and in the database log table. None may leave a stale read. Split out of
tests/test_faults.py; each scenario adds its row to the results table."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cachework.cache.invalidation import DatabaseLog, RedisLog, publish
from tests.conftest import make_env
from tests.fault_helpers import TABLE
from tests.fault_nodes import Node, traffic_environment

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def traffic(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    yield from traffic_environment(pg_server_url, redis_server_url, tmp_path_factory)


# --- Redis restart and SIGSTOP under invalidation traffic ----------------------------------


def _version_of(name: str) -> int:
    return int(name.rsplit("-v", 1)[1]) if "-v" in name else -1


def _write_and_publish(
    engine: sa.Engine, log: RedisLog, published: list[int], stop: threading.Event, failures: list
) -> None:
    """Rename category 1 and publish, in a loop; `published[0]` is the last version whose
    publish returned."""
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


def _read_and_check(app, row, published: list[int], stop: threading.Event) -> None:
    """Look category 1 up, in a loop: each answer must be the version published before the
    lookup was sent, or a newer one (else a stale read in `row`)."""
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


def _strike(server, fault: str) -> None:
    """Restart the stream's Redis twice, or freeze it (SIGSTOP) for 3 s."""
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


def _listener_lines(folder: Path) -> str:
    """The worker logs' lines about the listener, drops and malformed entries."""
    return "\n".join(
        line
        for path in sorted(folder.glob("worker-*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if "dropping" in line or "listener" in line or "malformed" in line
    )


@pytest.mark.parametrize("fault", ["restart", "sigstop"])
def test_redis_fault_under_invalidation_traffic_gives_no_stale_read(traffic, fault):
    """A writer renames category 1 and publishes, in a loop; lookups sent after a publish
    returned must read that version or a newer one. Meanwhile the stream's Redis is
    restarted (twice) or frozen (SIGSTOP 3 s)."""
    engine, server, nodes, log = (traffic[k] for k in ("engine", "server", "nodes", "log"))
    row = TABLE.row(
        f"Redis {'restart' if fault == 'restart' else 'SIGSTOP 3 s'} under invalidations"
    )
    published = [-1]  # nothing published yet: any name, the seeded one too, is fresh
    stop = threading.Event()
    failures: list[str] = []
    threads = [
        threading.Thread(
            target=_write_and_publish,
            args=(engine, log, published, stop, failures),
            name="faults-writer",
        )
    ] + [
        threading.Thread(
            target=_read_and_check,
            args=(nodes.app, row, published, stop),
            name=f"faults-reader-{i}",
        )
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        _strike(server, fault)
    finally:
        if fault == "sigstop" and server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGCONT)
        stop.set()
        for thread in threads:
            thread.join(120)
    logs = _listener_lines(nodes.folder)
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
