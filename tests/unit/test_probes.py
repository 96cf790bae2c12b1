"""Fast checks of the probe machinery (no servers): parallel checks answered as soon as
known and never past their bound, a hanging check named and not piled up, the soft
shutdown settings, and `cachework health --live/--ready` against a node exporter stand-in.
The real worker, Redis and PostgreSQL are in tests/test_topology_k8s.py."""

from __future__ import annotations

import threading
import time

import pytest

import celeryconfig
from cachework.errors import ConfigError
from cachework.settings import load_settings
from cachework.worker.metrics import MetricsServer
from cachework.worker.probes import LIVE_PATH, READY_PATH, Checks, run_checks
from tests.conftest import make_env
from tests.test_health import timed_health as health


def test_checks_run_in_parallel_and_answer_when_all_are_in():
    started = time.perf_counter()
    problems = run_checks(
        {
            "a": lambda: time.sleep(0.3),
            "b": lambda: (time.sleep(0.3), "b is down")[1],
            "c": lambda: ["c1", "c2"],
        },
        timeout=5.0,
    )
    elapsed = time.perf_counter() - started
    assert problems == ["b is down", "c1", "c2"]  # in the order given
    assert elapsed < 1.0, elapsed  # 0.3 s, not 0.6 s, and not the 5 s timeout


def test_a_hanging_check_is_named_at_the_timeout_and_not_started_again():
    release = threading.Event()
    calls = []

    def hangs() -> None:
        calls.append(1)
        release.wait(10)

    checks = Checks(timeout=0.2)
    try:
        started = time.perf_counter()
        assert checks.run({"Redis": hangs, "ok": lambda: None}) == ["Redis: no answer within 0.2s"]
        assert time.perf_counter() - started < 1.0
        second = checks.run({"Redis": hangs})
        assert len(second) == 1 and second[0].startswith("Redis: no answer to a check started")
        assert calls == [1]  # one thread for a hung service, however many probes come
    finally:
        release.set()
    time.sleep(0.1)
    assert checks.run({"Redis": lambda: None}) == []  # ended: started again


def test_a_check_that_raises_is_one_line():
    assert run_checks({"database": lambda: 1 / 0}, 1.0) == [
        "database: ZeroDivisionError: division by zero"
    ]


# --- settings ------------------------------------------------------------------------------


def test_soft_shutdown_settings(tmp_path):
    settings = load_settings(make_env(tmp_path))
    assert (settings.soft_shutdown_timeout, settings.soft_shutdown_on_idle) == (0.0, False)
    conf = celeryconfig.build(settings)
    assert conf["worker_soft_shutdown_timeout"] == 0.0
    assert conf["worker_enable_soft_shutdown_on_idle"] is False
    settings = load_settings(
        make_env(tmp_path, soft_shutdown_timeout="45.5", soft_shutdown_on_idle="yes")
    )
    conf = celeryconfig.build(settings)
    assert conf["worker_soft_shutdown_timeout"] == 45.5
    assert conf["worker_enable_soft_shutdown_on_idle"] is True
    assert load_settings(make_env(tmp_path, soft_shutdown_timeout="off")).soft_shutdown_timeout == 0


@pytest.mark.parametrize(
    "name, raw, words",
    [
        ("soft_shutdown_timeout", "-1", ["CACHEWORK_SOFT_SHUTDOWN_TIMEOUT='-1'", "at least"]),
        ("soft_shutdown_timeout", "soon", ["CACHEWORK_SOFT_SHUTDOWN_TIMEOUT='soon'", "number"]),
        ("soft_shutdown_timeout", "inf", ["CACHEWORK_SOFT_SHUTDOWN_TIMEOUT='inf'", "finite"]),
        ("soft_shutdown_timeout", "nan", ["CACHEWORK_SOFT_SHUTDOWN_TIMEOUT='nan'", "finite"]),
        ("soft_shutdown_on_idle", "maybe", ["CACHEWORK_SOFT_SHUTDOWN_ON_IDLE='maybe'"]),
    ],
)
def test_bad_soft_shutdown_settings_are_named(tmp_path, name, raw, words):
    with pytest.raises(ConfigError) as caught:
        load_settings(make_env(tmp_path, **{name: raw}))
    for word in words:
        assert word in str(caught.value)


# --- cachework health --live / --ready -------------------------------------------------------


def test_live_and_ready_ask_this_hosts_node_exporter(tmp_path):
    """A node exporter stand-in (the same HTTP server): `--live` follows its `/live` and
    `--ready` its `/ready`, each answer's lines on one line."""
    ready_problems: list[str] = []
    server = MetricsServer(0, "127.0.0.1", lambda: b"", lambda: list(ready_problems), lambda: [])
    server.start()
    try:
        env = make_env(tmp_path, metrics_port=str(server.port))
        slow = ("--timeout", "10")  # answers, not timing: a busy box may take seconds
        assert health(env, "--live", *slow)[:2] == (0, "ok (live)")
        assert health(env, "--ready", *slow)[:2] == (0, "ok (ready)")
        ready_problems[:] = ["Redis: no answer within 0.8s", "broker: no answer within 0.8s"]
        assert health(env, "--live", *slow)[:2] == (0, "ok (live)")  # services: not liveness
        assert health(env, "--ready", *slow)[:2] == (
            1,
            "unhealthy (ready): Redis: no answer within 0.8s; broker: no answer within 0.8s",
        )
    finally:
        server.stop()
    status, output, _ = health(env, "--live", "--timeout", "1")
    assert status == 1 and output.startswith("unhealthy (live): no worker node answers at"), output


def test_live_needs_the_metrics_port(tmp_path):
    status, output, _ = health(make_env(tmp_path), "--live")
    assert status == 1
    assert "set CACHEWORK_METRICS_PORT" in output, output


def test_paths_are_the_servers(tmp_path):
    """The probe paths the manifests use are the ones the server routes (404 otherwise)."""
    import urllib.error
    import urllib.request

    server = MetricsServer(0, "127.0.0.1", lambda: b"", lambda: [], lambda: []).start()
    try:
        for path in (LIVE_PATH, READY_PATH):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}") as response:
                assert response.status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()
