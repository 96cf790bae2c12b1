"""Kubernetes probes against a real worker node with its own Redis (broker, results,
invalidations) and its own PostgreSQL, and its metrics exporter on a free loopback port.

- Liveness depends on the process alone: `/live` (and `cachework health --live`) stays 200
  while Redis is frozen (SIGSTOP: connections hang, nothing is refused) and PostgreSQL is
  stopped, each answer well under a second; an outage must not restart every pod.
- Readiness depends on the services: `/ready` turns 503, still answering within its bound,
  and comes back by itself once the services do.
- `cachework health` answers as soon as the answer is known: under 1 s when healthy (the
  kubelet's default exec probe timeout), and within `--timeout` (plus start-up) when not.

Timings are printed (`pytest -s`) for the README.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import MODELS, make_env, unavailable
from tests.fault_helpers import OwnPostgres
from tests.invalidation_helpers import OwnRedis, free_port, wait_until
from tests.test_health import timed_health as health

pytestmark = pytest.mark.topology
HEALTHY_BOUND = 1.0  # seconds: the kubelet's default probe timeout


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str, float]:
    """GET `path` on the node's exporter: (status, body, seconds)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    return status, body, time.perf_counter() - started


def median_time(env: dict[str, str], *args: str, runs: int = 5) -> float:
    """The median time of `runs` healthy runs of `cachework health ARGS` (each must pass)."""
    times = []
    for _ in range(runs):
        status, output, seconds = health(env, *args)
        assert status == 0, output
        times.append(seconds)
    print(f"cachework health {' '.join(args)}: " + ", ".join(f"{t:.3f}" for t in times))
    return statistics.median(times)


@pytest.fixture
def node(tmp_path, worker_process) -> Iterator[dict]:
    """A one-child worker node on a private Redis and a private PostgreSQL, exporter on."""
    from cachework.worker.schema import create_tables

    try:
        pg = OwnPostgres().init()
        pg.start()
    except (FileNotFoundError, subprocess.SubprocessError) as exc:
        unavailable("PostgreSQL server binaries", exc)
    redis_server = OwnRedis(tmp_path / "redis").start()
    engine = sa.create_engine(pg.url, poolclass=sa.pool.NullPool)
    port = free_port()
    try:
        create_tables(engine, MODELS)
        env = make_env(
            tmp_path,
            database_url=pg.url,
            broker_url=redis_server.url,
            result_backend=redis_server.url,
            redis_url=redis_server.url,
            metrics_port=str(port),
        )
        worker, _app = worker_process(env, concurrency=1)
        wait_until(lambda: get(port, "/ready")[0] == 200, timeout=30, every=0.2)
        yield {"env": env, "port": port, "redis": redis_server, "pg": pg, "worker": worker}
    finally:
        if redis_server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_server.proc.pid, signal.SIGCONT)
        engine.dispose()
        redis_server.stop()
        pg.destroy()


def test_liveness_stays_up_while_redis_and_postgres_are_down(node):
    env, port, redis_server, pg = node["env"], node["port"], node["redis"], node["pg"]
    assert get(port, "/live")[:2] == (200, "ok\n")
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # frozen: connections hang
    pg.stop("immediate")
    try:
        live_times, ready_times, ready = [], [], []
        deadline = time.monotonic() + 12
        for _ in range(40):  # bounded in count and time
            if time.monotonic() > deadline:
                break
            status, body, seconds = get(port, "/live")
            assert status == 200, body  # never a restart for an outage of the services
            live_times.append(seconds)
            status, body, seconds = get(port, "/ready")
            ready.append((status, body))
            ready_times.append(seconds)
            time.sleep(0.2)
        assert len(live_times) >= 10
        print(f"/live while down: max {max(live_times):.3f}s over {len(live_times)} answers")
        print(f"/ready while down: max {max(ready_times):.3f}s; last: {ready[-1]}")
        assert max(live_times) < 0.5, live_times
        assert ready[-1][0] == 503, ready[-1]  # not ready: the services are down
        assert max(ready_times) < HEALTHY_BOUND + 0.5, ready_times  # bounded even now
        status, output, seconds = health(env, "--live")
        assert (status, output) == (0, "ok (live)"), output
        assert seconds < 2 * HEALTHY_BOUND, seconds  # a loaded box: spawn + imports
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
        pg.start()
    # Back by itself, without a restart.
    wait_until(lambda: get(port, "/ready")[0] == 200, timeout=60, every=0.5)
    assert node["worker"].proc.poll() is None


def test_health_command_answers_fast(node):
    env, redis_server = node["env"], node["redis"]
    assert health(env)[:2] == (0, "ok (readiness)")
    readiness = median_time(env)
    print(f"readiness median {readiness:.3f}s")
    assert readiness < HEALTHY_BOUND
    for args in (("--live",), ("--ready",)):  # the exec probes
        assert median_time(env, *args) < HEALTHY_BOUND, args
    # The services from anywhere (not a probe): no worker to wait for, all imports.
    assert median_time(env, "--liveness") < 2 * HEALTHY_BOUND
    # Unhealthy: still an answer within its timeout (plus the process's start-up).
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        status, output, seconds = health(env, "--timeout", "1")
        print(f"readiness with Redis frozen: {seconds:.3f}s: {output}")
        assert status == 1, output
        assert output.startswith("unhealthy (readiness)"), output
        assert seconds < 1 + HEALTHY_BOUND + 0.5, seconds
        status, output, seconds = health(env, "--ready")
        print(f"--ready with Redis frozen: {seconds:.3f}s: {output}")
        assert status == 1, output
        assert seconds < 2 * HEALTHY_BOUND + 0.5, seconds
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


# --- SIGTERM with REMAP_SIGTERM=SIGQUIT: Celery's soft shutdown (deploy/kubernetes) -------


def _sigterm(worker, timeout: float = 60.0) -> float:
    """SIGTERM the node's main process, as the kubelet does: seconds until it exited."""
    started = time.monotonic()
    os.kill(worker.proc.pid, signal.SIGTERM)
    worker.proc.wait(timeout)
    return time.monotonic() - started


def test_sigterm_gives_running_tasks_the_soft_shutdown_then_requeues_them(
    tmp_path, pg_url, worker_process
):
    """CACHEWORK_SOFT_SHUTDOWN_TIMEOUT reaches Celery: a task shorter than it finishes on
    the node being stopped; a longer one is cancelled when it ends and runs again on
    another node (acks late), instead of holding the pod until its time limit."""
    from cachework.worker.schema import create_tables

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    create_tables(engine, MODELS)
    engine.dispose()
    server = OwnRedis(tmp_path / "redis").start()
    try:
        env = make_env(
            tmp_path,
            database_url=pg_url,
            broker_url=server.url,
            result_backend=server.url,
            redis_url=server.url,
            soft_shutdown_timeout="3",
        )
        env["REMAP_SIGTERM"] = "SIGQUIT"
        first, app = worker_process(env, concurrency=1)
        short = app.send_task("cachework.ping", kwargs={"hold": 1.0})
        wait_until(lambda: short.state == "STARTED", timeout=30, every=0.05)
        took = _sigterm(first)
        print(f"SIGTERM with a 1 s task, soft shutdown 3 s: exit after {took:.2f}s")
        assert short.ready() and short.successful(), short.state  # finished there
        assert 3.0 <= took < 3.0 + 10, took  # the soft shutdown's wait, then the exit

        second, _ = worker_process(dict(env, CACHEWORK_SOFT_SHUTDOWN_TIMEOUT="1"), concurrency=1)
        long = app.send_task("cachework.ping", kwargs={"hold": 5.0})
        wait_until(lambda: long.state == "STARTED", timeout=30, every=0.05)
        took = _sigterm(second)
        print(f"SIGTERM with a 5 s task, soft shutdown 1 s: exit after {took:.2f}s")
        assert took < 4.5, took  # did not wait for the task
        assert not long.successful()
        worker_process(dict(env, REMAP_SIGTERM=""), concurrency=1)  # another node
        assert long.get(timeout=60)["dialect"] == "postgresql"  # requeued and run again
    finally:
        server.stop()
