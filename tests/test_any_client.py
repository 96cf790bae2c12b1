"""Any Celery client works: a web app's own client, a plain one, and the app's own workers
on the same broker.

Real prefork workers; every client is a separate process that imports `celery` (and, when
it routes, the one routing module): never cachework's app, tasks or cache.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework.errors import ConfigError
from cachework.settings import load_settings
from cachework.worker import routing
from cachework.worker.schema import create_tables
from cachework.worker.spawn import stop_process_group
from demo.seed import project_uuid, seed
from tests.conftest import MODELS, make_env

ROOT = Path(__file__).resolve().parent.parent
CLIENT = Path(__file__).with_name("any_client.py")
PRODUCTS = 12
PROJECT = project_uuid(0)
OTHER_PROJECT = project_uuid(1)  # never synced: its delete is exact even beside the sync
# Each contract task, sent by name with keyword arguments as the README shows.
CONTRACT = [
    (
        "cachework.import_versions",
        {"user": "alice", "comment": "after bulk load", "models": ["Product"]},
    ),
    ("cachework.sync_cache", {"project": PROJECT}),
    ("cachework.delete_cache", {"project": OTHER_PROJECT}),
    ("cachework.process_invalidation", {"table": "categories", "keys": [3]}),
    ("cachework.cache_status", {}),
    ("cachework.lookup", {"table": "categories", "key": 1}),
]


# --- helpers --------------------------------------------------------------------------------


def seeded(url: str) -> str:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        create_tables(engine, MODELS)
        with Session(engine) as session, session.begin():
            seed(session, projects=2, products=PRODUCTS)
    finally:
        engine.dispose()
    return url


def start_client(broker: str, backend: str, mode: str, calls: list) -> subprocess.Popen:
    """Start tests/any_client.py in its own process (it sends every call, then waits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    return subprocess.Popen(
        [sys.executable, str(CLIENT), broker, backend, mode, json.dumps(calls)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def client_results(client: subprocess.Popen, mode: str) -> list[dict]:
    """The client's results, in the order sent (it gives up after 30 s; killed at 90 s)."""
    try:
        stdout, stderr = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, stderr[-3000:]
    out = json.loads(stdout)
    # Nothing of cachework but the routing module (and the small packages holding it).
    expected = (
        ["cachework", "cachework.moves", "cachework.worker", "cachework.worker.routing"]
        if mode == "routed"
        else []
    )
    assert out["modules"] == expected, out["modules"]
    return out["results"]


def run_client(broker: str, backend: str, mode: str, calls: list) -> list[dict]:
    return client_results(start_client(broker, backend, mode, calls), mode)


def check_contract_results(results: list[dict], node_name: str) -> None:
    by_name = {r["name"]: r for r in results}
    assert set(by_name) == {name for name, _ in CONTRACT}
    errors = {r["name"]: r["error"] for r in results if "error" in r}
    assert not errors, errors
    assert {r["worker"] for r in results} == {node_name}
    imported = by_name["cachework.import_versions"]["value"]
    assert imported["models"]["Product"]["created"] == PRODUCTS, imported
    assert imported["transaction_id"] is not None and imported["warnings"] == []
    synced = by_name["cachework.sync_cache"]["value"]
    assert synced["errors"] == [] and synced["projects"] == 1, synced
    assert by_name["cachework.delete_cache"]["value"] == {"deleted": 0}
    event = by_name["cachework.process_invalidation"]["value"]
    assert isinstance(event["event_id"], str) and event["event_id"], event
    status = by_name["cachework.cache_status"]["value"]
    assert {"pid", "cursor", "tables"} <= set(status), status
    assert by_name["cachework.lookup"]["value"]["code"] == "tools"


def parent_pid(pid: int) -> int:
    """The parent of `pid` (Linux /proc): a prefork child's parent is its node's main."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def wait_for_text(path: Path, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {path} within {timeout}s:\n{text[-3000:]}")


def wait_for_ping(app, name: str, proc: subprocess.Popen, log: Path, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{name} exited:\n{log.read_text(errors='replace')[-3000:]}"
        replies = app.control.ping(destination=[name], timeout=0.5) or []
        if any(name in reply for reply in replies):
            return
    raise AssertionError(f"{name} did not answer ping in {timeout}s")


def cli_status(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from cachework.worker.cli import main; main()",
            "status",
            "--timeout",
            "2",
        ],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- routing and settings, no broker ----------------------------------------------------------


def test_routing_module_imports_no_celery_and_reads_no_settings():
    code = (
        "import sys, cachework.worker.routing\n"
        "assert 'celery' not in sys.modules and 'cache' not in sys.modules, sorted(sys.modules)\n"
        "assert 'cachework.worker.celery_app' not in sys.modules\n"
    )
    env = {**os.environ, "CACHEWORK_BROKER_URL": "kafka://not-read"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)


def test_route_task_routes_cachework_tasks_only():
    assert routing.route_task("cachework.import_versions", (), {}, {}) == {"queue": "versions"}
    assert routing.route_task("cachework.lookup", (), {}, {}, task=None) == {"queue": "cache"}
    assert routing.route_task("cachework.process_invalidation", (), {}, {}) == {
        "queue": "invalidations"
    }
    assert routing.route_task("cachework.sync_cache_summary", (), {}, {}) == {"queue": "cache"}
    assert routing.route_task("myapp.send_mail", (), {}, {}) is None
    assert set(routing.ROUTES.values()) <= set(routing.QUEUES)


def test_queues_leave_the_default_queue_to_the_app_on_a_shared_broker(tmp_path: Path):
    assert routing.queues(shared=False) == ("versions", "cache", "invalidations", "celery")
    assert routing.queues(shared=True) == ("versions", "cache", "invalidations")
    import celeryconfig

    for value, shared in (("1", True), ("on", True), ("false", False), ("", False)):
        s = load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_SHARED_BROKER": value})
        assert s.shared_broker is shared
        names = [q.name for q in celeryconfig.build(s)["task_queues"]]
        assert tuple(names) == routing.queues(shared)
    # Celery's default queue, declared exactly as a plain client declares it.
    default = celeryconfig.build(load_settings({"CACHEWORK_DATA_DIR": str(tmp_path)}))[
        "task_queues"
    ][-1]
    assert (default.name, default.exchange.name, default.exchange.type, default.routing_key) == (
        "celery",
        "celery",
        "direct",
        "celery",
    )


def test_bad_shared_broker_value_names_variable_and_value(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"CACHEWORK_SHARED_BROKER='maybe' is not a boolean"):
        load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_SHARED_BROKER": "maybe"})


def test_embedded_broker_makes_its_folders_when_it_connects(tmp_path: Path):
    from cachework.worker import create_app

    settings = load_settings({"CACHEWORK_DATA_DIR": str(tmp_path / "data")})
    app = create_app(settings)
    try:
        assert not (tmp_path / "data").exists()  # making the app made nothing
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            conn.default_channel  # noqa: B018 - opens the channel
        assert (settings.broker_folder / "queue").is_dir()
        assert (settings.broker_folder / "control").is_dir()
    finally:
        app.close()


def test_unknown_task_explanations_name_the_task_and_the_fix():
    from cachework.worker.unknown_tasks import explain

    text = explain("myapp.send_mail", "celery", {"cache", "celery"}, shared=False)
    assert "'myapp.send_mail' is not a cachework task" in text
    assert "CACHEWORK_SHARED_BROKER is off" in text and "CACHEWORK_SHARED_BROKER=1" in text
    assert routing.ROUTING_LINE in text
    text = explain("myapp.send_mail", "celery", {"cache", "celery"}, shared=True)
    assert "-Q" in text
    text = explain("myapp.send_mail", "cache", {"cache"}, shared=True)
    assert "queue 'cache'" in text and "task_routes" in text
    assert "different versions" in explain("cachework.gone", "cache", {"cache"}, shared=False)


# --- real workers -------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_routed_client_gets_every_contract_result(
    broker, request, tmp_path, sqlite_url, redis_url, worker_process
):
    """(a) The README's client, with its one routing line, on a broker of each kind."""
    broker_url = request.getfixturevalue("amqp_url") if broker == "amqp" else redis_url
    env = make_env(
        tmp_path,
        database_url=seeded(sqlite_url),
        broker_url=broker_url,
        result_backend=redis_url,
        redis_url=redis_url,
    )
    node, _app = worker_process(env)
    results = run_client(broker_url, redis_url, "routed", CONTRACT)
    check_contract_results(results, node.name)


def test_plain_client_without_routing_works_on_a_dedicated_broker(
    tmp_path, sqlite_url, redis_url, worker_process
):
    """(b) No routing set-up at all: every task goes to `celery`, which cachework consumes."""
    env = make_env(
        tmp_path, database_url=seeded(sqlite_url), broker_url=redis_url, result_backend=redis_url
    )
    node, _app = worker_process(env)
    results = run_client(redis_url, redis_url, "plain", CONTRACT)
    check_contract_results(results, node.name)
    status = next(r["value"] for r in results if r["name"] == "cachework.cache_status")
    assert parent_pid(status["pid"]) == node.proc.pid  # a prefork child of the node


def _wait_untaken_on_celery(redis_url: str, node) -> None:
    """Only cachework's worker runs yet: the app's 8 tasks wait on `celery`, untaken."""
    broker = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 20
        while broker.llen("celery") < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # time enough for a worker consuming `celery` to take some
        assert broker.llen("celery") == 8, node.logfile.read_text(errors="replace")[-3000:]
    finally:
        broker.close()


def _start_foreign_worker(redis_url: str, name: str, log_path: Path) -> subprocess.Popen:
    """The app's own Celery worker (tests/foreign_app.py), prefork, on the shared broker."""
    foreign_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")},
        "FOREIGN_BROKER_URL": redis_url,
        "FOREIGN_RESULT_BACKEND": redis_url,
    }
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "tests.foreign_app", "worker",
                "-P", "prefork", "-c", "2", "-n", name, "-l", "INFO",
                "--without-gossip", "--without-mingle",
            ],
            cwd=ROOT,
            env=foreign_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _check_each_side_ran_its_own(results: list[dict], node, foreign, foreign_name: str) -> None:
    """cachework's tasks ran in the cachework node's children, the app's in its worker's."""
    ours = [r for r in results if r["name"].startswith("cachework.")]
    check_contract_results(ours, node.name)
    status = next(r["value"] for r in ours if r["name"] == "cachework.cache_status")
    assert parent_pid(status["pid"]) == node.proc.pid
    theirs = [r for r in results if r["name"] == "myapp.whoami"]
    assert [r.get("error") for r in theirs] == [None] * 8, theirs
    assert sorted(r["value"]["n"] for r in theirs) == list(range(8))
    for r in theirs:
        assert r["worker"] == r["value"]["hostname"] == foreign_name, r
        assert parent_pid(r["value"]["pid"]) == foreign.pid, r


def _check_status_tells_the_sides_apart(env: dict[str, str], foreign_name: str) -> None:
    """`cachework status` tells the two sides apart and leaves `celery` to the app."""
    done = cli_status(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"other workers\s.*" + re.escape(foreign_name), done.stdout)
    assert "left to the app's workers" in done.stdout
    assert re.search(r"queue celery\s.*consumers: " + re.escape(foreign_name), done.stdout)


def test_the_apps_own_workers_share_the_broker_and_each_side_runs_its_own_tasks(
    tmp_path, sqlite_url, redis_url, worker_process
):
    """(c) CACHEWORK_SHARED_BROKER=1: a foreign Celery worker consumes `celery`; cachework
    workers do not (the app's tasks wait untaken until the app's worker starts); a routed
    client's tasks each run on their own side."""
    env = make_env(
        tmp_path,
        database_url=seeded(sqlite_url),
        broker_url=redis_url,
        result_backend=redis_url,
        shared_broker="1",
    )
    node, app = worker_process(env)
    calls: list = []
    for i in range(8):  # interleaved, so either side could take the other's task
        calls.append(["myapp.whoami", {"n": i}])
        if i < len(CONTRACT):
            calls.append(list(CONTRACT[i]))
    client = start_client(redis_url, redis_url, "routed", calls)
    foreign = None
    try:
        _wait_untaken_on_celery(redis_url, node)
        foreign_name = "foreign@127.0.0.1"
        foreign_log = tmp_path / "foreign.log"
        foreign = _start_foreign_worker(redis_url, foreign_name, foreign_log)
        wait_for_ping(app, foreign_name, foreign, foreign_log)
        results = client_results(client, "routed")

        _check_each_side_ran_its_own(results, node, foreign, foreign_name)
        for log_path in (foreign_log, node.logfile):
            text = log_path.read_text(errors="replace")
            assert "unregistered task" not in text, text[-3000:]
        _check_status_tells_the_sides_apart(env, foreign_name)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
        if foreign is not None:
            stop_process_group(foreign, timeout=20)


def test_foreign_task_on_a_dedicated_broker_is_logged_with_the_fix(
    tmp_path, sqlite_url, redis_url, worker_process
):
    """(d) The app's task reaches a cachework worker (no CACHEWORK_SHARED_BROKER): the
    worker log names the task, why it came here and what to do."""
    env = make_env(tmp_path, database_url=seeded(sqlite_url), broker_url=redis_url)
    node, _app = worker_process(env, concurrency=1)
    code = (
        "import sys\n"
        "from celery import Celery\n"
        f"Celery(broker={redis_url!r}).send_task('myapp.send_mail', kwargs={{'to': 'x'}})\n"
        "assert 'worker' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    text = wait_for_text(node.logfile, r"'myapp\.send_mail' is not a cachework task")
    line = next(x for x in text.splitlines() if "'myapp.send_mail' is not a cachework" in x)
    assert "default queue 'celery'" in line and "CACHEWORK_SHARED_BROKER is off" in line
    assert "CACHEWORK_SHARED_BROKER=1" in line and routing.ROUTING_LINE in line


def test_status_exits_nonzero_without_workers_and_says_why_messages_wait(
    tmp_path, sqlite_url, redis_url
):
    """Messages on `celery` and no worker: `cachework status` says why and exits 1."""
    env = make_env(tmp_path, database_url=sqlite_url, broker_url=redis_url)
    code = (
        "from celery import Celery\n"
        f"Celery(broker={redis_url!r}).send_task('cachework.lookup', kwargs={{}})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    done = cli_status(env)
    assert done.returncode == 1, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "none answered ping" in out and "no worker answered ping" in out
    assert re.search(r"default queue\W+'celery' \(Celery's default queue: consumed by", out)
    assert "1 message(s) wait on Celery's default queue 'celery'" in out
    assert "queue versions" in out and "0 waiting" in out


def test_readme_client_example_runs_as_written(tmp_path, sqlite_url, redis_url, worker_process):
    """The README's first example, run as written: only its URLs (the README's hosts) are
    the test's, and `project_uuid` is defined. Its `result.get()` returns, no routing set-up
    beyond its one line, and it imports nothing of cachework but the routing module."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Enqueueing from a web app", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    urls = re.findall(r'"(redis://[^"]+)"', example)
    assert len(urls) == 2 and "celery.conf.task_routes" in example, example
    production = readme.split("## Running in production", 1)[1]
    # The client's result backend is the workers' CACHEWORK_RESULT_BACKEND.
    assert f"CACHEWORK_RESULT_BACKEND={urls[1]}" in production
    assert f"CACHEWORK_BROKER_URL={urls[0]}" in production
    for url in urls:
        example = example.replace(url, redis_url)
    env = make_env(
        tmp_path,
        database_url=seeded(sqlite_url),
        broker_url=redis_url,
        result_backend=redis_url,
        shared_broker="1",  # the routing line alone brings every task to cachework
    )
    worker_process(env)
    script = tmp_path / "webapp.py"
    script.write_text(
        f"project_uuid = {PROJECT!r}\n"
        + example
        + "\nimport sys\n"
        + "assert not [m for m in sys.modules if m.split('.')[0] in "
        + "('tasks', 'cache', 'celeryconfig', 'sqlalchemy')"
        + " or m == 'cachework.worker.celery_app']\n"
    )
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=client_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # a dict's repr
    assert printed["models"]["Product"]["created"] == PRODUCTS, printed
