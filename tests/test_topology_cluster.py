"""Redis Cluster is refused (make topology): a private 3-master cluster, CACHEWORK_REDIS_URL
on one of its nodes. cachework's scripts use several keys per call (the stream and its
epoch key, a lock and its dirty set), which a cluster puts on different slots: instead of
CROSSSLOT/MOVED errors in every task and a readiness that says ok, a worker, a web app's
start_runtime() and readiness each say so in one line naming the URL and the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cachework import redis_policy
from cachework.errors import ConfigError
from cachework.settings import load_settings
from cachework.worker import process_health as health
from cachework.worker.runtime import Runtime, start_runtime
from tests.conftest import make_env, started
from tests.sentinel_helpers import RedisCluster

pytestmark = pytest.mark.topology

REASON = "Redis Cluster node (cluster_enabled:1)"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    service = "Redis Cluster (redis-server --cluster-enabled, redis-cli --cluster)"
    with started(RedisCluster(tmp_path_factory.mktemp("cluster")), service) as found:
        yield found


def _env(tmp_path, cluster: RedisCluster) -> dict[str, str]:
    # A password in the URL: the line must name the URL with it masked.
    url = cluster.url().replace("redis://", "redis://:hunter2@")
    env = make_env(tmp_path, redis_url=url, cached_tables="off", projects="off")
    Path(env["CACHEWORK_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    return env


def test_start_runtime_refuses_a_cluster_in_one_line(tmp_path, cluster):
    settings = load_settings(_env(tmp_path, cluster))
    with pytest.raises(ConfigError) as refused:
        start_runtime(settings)
    line = str(refused.value)
    assert "\n" not in line
    assert REASON in line and "CACHEWORK_REDIS_URL=" in line, line
    assert f"127.0.0.1:{cluster.ports[0]}" in line and "hunter2" not in line, line
    assert "Sentinel" in line  # what to use instead


def test_readiness_is_never_ok_on_a_cluster(tmp_path, cluster):
    settings = load_settings(_env(tmp_path, cluster))
    problems = redis_policy.eviction_problems(settings, broker=True, timeout=3)
    assert len(problems) == 1 and REASON in problems[0], problems
    runtime = Runtime(settings)
    try:
        ready = health.readiness(runtime, timeout=3)
    finally:
        runtime.close()
    assert any(REASON in p for p in ready), ready


def test_a_worker_on_a_cluster_exits_with_one_line(tmp_path, cluster):
    """A real `celery -A cachework.worker worker`: exit status 2 and the one line, no traceback."""
    from cachework.worker.spawn import WorkerProcess

    env = _env(tmp_path, cluster)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, concurrency=1, logfile=log).start()
    try:
        status = worker.proc.wait(90)
    finally:
        worker.stop(timeout=5)
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert status == 2, text[-3000:]
    assert len(lines) == 1 and REASON in lines[0], text[-3000:]
    assert "hunter2" not in text and "Traceback" not in text, text[-3000:]
