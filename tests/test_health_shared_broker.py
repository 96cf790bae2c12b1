"""`cachework health` on a broker shared with another team's Celery workers (issue 22,
item 2): readiness asks cachework's workers only, so the team's workers never see a
command they do not know (each used to log `pidbox command error: KeyError(...)` with a
traceback per probe), and it answers as soon as cachework's workers have, not at its
timeout.

The team's worker is a real `celery worker` of a tiny app of its own (a module written to
the test's folder, its own queue) on the same broker (Redis, and RabbitMQ when there is
one) as a real cachework worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from cachework.settings import load_settings
from cachework.worker.spawn import stop_process_group
from tests.conftest import make_env
from tests.invalidation_helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]

TEAM_APP = '''
"""Another team's Celery app: nothing of cachework."""
import os

from celery import Celery

app = Celery("teamapp", broker=os.environ["TEAM_BROKER_URL"])
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue="team-queue")


@app.task(name="team.add")
def add(a, b):
    return a + b
'''

# What a worker logs when it is sent a control command it does not know.
FOREIGN_ERRORS = ("pidbox command error", "KeyError('cachework_", "Traceback")


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request, redis_url) -> str:
    return request.getfixturevalue("amqp_url") if request.param == "amqp" else redis_url


@pytest.fixture
def team_worker(tmp_path: Path, broker_url: str) -> Iterator[tuple[str, Path]]:
    """The other team's worker on `broker_url`: (node name, log file); stopped at the end."""
    folder = tmp_path / "team"
    folder.mkdir()
    (folder / "teamapp.py").write_text(TEAM_APP)
    log = folder / "worker.log"
    name = f"team-{uuid.uuid4().hex[:8]}@127.0.0.1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    env.update(TEAM_BROKER_URL=broker_url, PYTHONPATH=str(folder))
    cmd = [
        sys.executable, "-m", "celery", "-A", "teamapp", "worker", "-P", "solo", "-n", name,
        "-Q", "team-queue", "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    probe = Celery("probe", broker=broker_url, set_as_current=False)
    try:
        wait_until(
            lambda: proc.poll() is not None or probe.control.ping(destination=[name], timeout=0.5),
            timeout=60,
            every=0.2,
        )
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        yield name, log
    finally:
        probe.close()
        stop_process_group(proc)


def health(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`cachework health ARGS` in a process of its own: (exit status, output)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from cachework.worker.cli import main; main()", "health", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def assert_team_log_clean(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert "ready" in text, text[-2000:]  # the log is the worker's (it started)
    for words in FOREIGN_ERRORS:
        assert words not in text, text[-3000:]


def test_readiness_asks_only_cachework_workers(
    tmp_path, sqlite_url, redis_url, broker_url, team_worker, worker_process
):
    from cachework.worker.health import collect_nodes, control_app, readiness

    team_node, team_log = team_worker
    env = make_env(
        tmp_path,
        database_url=sqlite_url,
        broker_url=broker_url,
        result_backend=redis_url,
        redis_url=redis_url,
    )
    node, _app = worker_process(env, concurrency=1)
    for _ in range(3):
        assert health(env, "--readiness", "--timeout", "10") == (0, "ok (readiness)")

    app = control_app(load_settings(env))
    try:
        nodes = collect_nodes(app, timeout=10)
        assert set(nodes) == {node.name}, nodes  # the team's node is not asked
        # Correct, and no waiting for answers that cannot come: a healthy deployment
        # answers far inside the timeout (the bound only a defect can break).
        started = time.monotonic()
        assert readiness(load_settings(env), app, timeout=10) == []
        assert time.monotonic() - started < 5
    finally:
        app.close()
    time.sleep(0.5)  # anything the team's worker would log about the last command
    assert_team_log_clean(team_log)
    assert team_node not in nodes


def test_no_cachework_worker_beside_a_team_worker(tmp_path, sqlite_url, broker_url, team_worker):
    """Only the team's worker answers: readiness says no cachework worker answered, and
    says it without waiting out its timeout (the team's answer says who is there)."""
    from cachework.worker.health import cachework_nodes, control_app

    _team_node, team_log = team_worker
    env = make_env(tmp_path, database_url=sqlite_url, broker_url=broker_url, redis_url="off")
    Path(env["CACHEWORK_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    status, output = health(env, "--readiness", "--timeout", "10")
    assert status == 1 and "no cachework worker answered" in output, output
    app = control_app(load_settings(env))
    try:
        started = time.monotonic()
        assert cachework_nodes(app, timeout=10) == []
        assert time.monotonic() - started < 5
    finally:
        app.close()
    assert_team_log_clean(team_log)
