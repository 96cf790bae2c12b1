"""cachework in a team's codebase (issue 22): the team's own Celery app in Celery's
first-steps layout (`celeryconfig.py`, `tasks.py`, `worker.py`) and a `cache/` package of
its own, first on sys.path of every process (tests/team_app), on one broker with a real
cachework worker.

Every cachework command and task works there (none imports the team's modules, nor they
ours); the team's worker logs no cachework error (readiness asks cachework's workers
only); and the team's ORM writes in its own Celery tasks, in prefork children, invalidate
cachework's cached table through the one documented call, `enable(Session)`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery

from cachework.worker.spawn import WorkerProcess, stop_process_group
from tests.conftest import make_env

TEAM_APP = Path(__file__).resolve().parent / "team_app"
CACHEWORK = [sys.executable, "-c", "from cachework.worker.cli import main; main()"]


@pytest.fixture
def team(tmp_path, pg_url, redis_url):
    """The team's folder (a copy), its environment, its database seeded by `initdb`."""
    folder = tmp_path / "teamapp"
    shutil.copytree(TEAM_APP, folder)
    env = make_env(
        tmp_path,
        database_url=pg_url,
        redis_url=redis_url,
        broker_url=redis_url,
        result_backend=redis_url,
        shared_broker="1",
        models="shop.models",
        cached_tables="shop.cached_tables",
        projects="shop_project.id",
    )
    env.update(PYTHONPATH=str(folder), TEAM_BROKER_URL=redis_url)
    run = _runner(folder, env)
    assert run("initdb").returncode == 0
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO shop_project VALUES (1, 'p1')"))
        conn.execute(sa.text("INSERT INTO shop_category VALUES (1, 'c1', 'n1'), (2, 'c2', 'n2')"))
    engine.dispose()
    return {"folder": folder, "env": env, "run": run, "tmp": tmp_path}


def _runner(folder: Path, env: dict):
    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*CACHEWORK, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120
        )
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        return done

    return run


def _team_worker(team: dict, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork", "-c", "2",
         "-n", "team@127.0.0.1", "-Q", "celery", "-l", "INFO", "--without-gossip",
         "--without-mingle"],
        cwd=team["folder"], env=team["env"], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _lookup(client: Celery, key: int) -> str:
    record = client.send_task(
        "cachework.lookup", kwargs={"table": "shop_category", "key": key}
    ).get(timeout=30)
    return record["name"]


def test_cachework_beside_a_teams_first_steps_layout(team):
    env, run = team["env"], team["run"]
    node = WorkerProcess(env, logfile=team["tmp"] / "cachework-worker.log", cwd=team["folder"])
    node.start()
    team_log_file = open(team["tmp"] / "team-worker.log", "wb")  # noqa: SIM115 - closed below
    team_proc = _team_worker(team, team_log_file)
    client = Celery(broker=env["CACHEWORK_BROKER_URL"], backend=env["CACHEWORK_RESULT_BACKEND"])
    client.conf.task_routes = ("cachework.worker.routing.route_task",)
    try:
        app = Celery(broker=env["CACHEWORK_BROKER_URL"])
        node.wait_ready(app, timeout=90)
        app.close()
        deadline = time.monotonic() + 60
        while client.control.ping(destination=["team@127.0.0.1"], timeout=0.5) == []:
            assert time.monotonic() < deadline, "the team's worker did not start"
            assert team_proc.poll() is None, (team["tmp"] / "team-worker.log").read_text()

        # Commands, run from the team's folder with its modules first on the path.
        for args in (["status"], ["health", "--readiness"], ["health", "--liveness"],
                     ["db", "current"], ["triggers", "status"],
                     ["import-versions", "--dry-run"], ["sync-cache", "--enqueue"],
                     ["invalidate", "shop_category", "2", "--enqueue"]):  # fmt: skip
            done = run(*args)
            assert done.returncode in (0, 1) if args[0] == "triggers" else done.returncode == 0, (
                args,
                done.stdout,
                done.stderr,
            )

        # Tasks, sent by name as a web app sends them.
        assert _lookup(client, 1) == "n1"  # the table is loaded now, in a worker child
        for name, kwargs in (
            ("cachework.ping", {}),
            ("cachework.cache_status", {}),
            ("cachework.process_invalidation", {"table": "shop_category", "keys": [2]}),
            ("cachework.sync_cache", {"project": "1"}),
            ("cachework.delete_cache", {"project": "1"}),
            ("cachework.import_versions", {"dry_run": True}),
        ):
            result = client.send_task(name, kwargs=kwargs).get(timeout=60)
            assert isinstance(result, dict), (name, result)

        # The team's own task, in its own prefork child: an ORM write, tracked by enable().
        renamed = client.send_task("team.rename", args=[1, "renamed"], queue="celery")
        assert renamed.get(timeout=60) == "team:renamed"
        deadline = time.monotonic() + 20
        while (name := _lookup(client, 1)) != "team:renamed":
            assert time.monotonic() < deadline, f"the team's write never reached the cache: {name}"
            time.sleep(0.2)
    finally:
        client.close()
        node.stop()
        stop_process_group(team_proc)
        team_log_file.close()
    team_log = (team["tmp"] / "team-worker.log").read_text()
    assert "pidbox command error" not in team_log and "cachework_" not in team_log, team_log
    assert "Traceback" not in team_log and "ERROR" not in team_log, team_log
    ours = (team["tmp"] / "cachework-worker.log").read_text()
    assert "ImportError" not in ours and "Traceback" not in ours, ours[-3000:]
