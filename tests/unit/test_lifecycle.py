"""The worker's lifecycle without a worker (worker/lifecycle.py): every Celery signal is
handled once, by one object per app, and a runtime is stopped once per process. Real
workers: tests/test_worker.py, tests/test_health.py, tests/test_topology_pools.py."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from celery import signals

from cachework.worker import lifecycle
from cachework.worker.lifecycle import SIGNALS, WorkerLifecycle, lifecycle_of

OURS = "cachework."


def _cachework_receivers(signal) -> list:
    return [key for key, _receiver in signal.receivers if str(key[0]).startswith(OURS)]


def test_every_signal_has_one_cachework_handler_however_many_apps(tmp_path):
    from cachework.worker import create_app
    from tests.conftest import make_env, settings_of

    settings = settings_of(make_env(tmp_path))
    apps = [create_app(settings), create_app(settings)]
    lifecycle.connect_signals()
    for signal, _handler in SIGNALS:
        assert len(_cachework_receivers(signal)) == 1, signal.name
    handled = {signal.name for signal, _handler in SIGNALS}
    for name in ("worker_init", "worker_process_init", "task_prerun", "worker_shutdown"):
        assert name in handled
    assert all(isinstance(app.lifecycle, WorkerLifecycle) for app in apps)
    assert apps[0].lifecycle.runtime is apps[0].runtime
    for app in apps:
        app.close()


def test_no_module_but_the_lifecycle_connects_a_signal():
    """Importing the worker's modules connects nothing of theirs but the lifecycle's."""
    code = (
        "from celery import signals\n"
        "import cachework.worker.pools, cachework.worker.prefork, cachework.worker.unknown_tasks, "
        "cachework.worker.task_base, cachework.worker.metrics, cachework.worker.health, "
        "cachework.worker.exporter\n"
        "names = [n for n in dir(signals) if hasattr(getattr(signals, n), 'receivers')]\n"
        "print(sum(len(getattr(signals, n).receivers or ()) for n in names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


class _Runtime:
    def __init__(self) -> None:
        self.settings = SimpleNamespace(metrics_port=None, listener_stale_after=30.0)
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


def test_the_runtime_stops_once_per_process_whichever_signals_come():
    runtime = _Runtime()
    node = WorkerLifecycle(SimpleNamespace(runtime=runtime))
    node.main_pid = os.getpid() + 1  # as in a pool child: the main process is another
    node.child_shutdown()
    node.child_shutdown()
    node.worker_shutdown()
    assert runtime.stops == 1


def test_the_main_process_ignores_the_child_signals_a_solo_pool_sends():
    runtime = _Runtime()
    node = WorkerLifecycle(SimpleNamespace(runtime=runtime))
    node.main_pid = os.getpid()
    node.child_init()  # would start the runtime's threads in a child
    node.child_shutdown()
    assert runtime.stops == 0
    node.worker_shutdown()
    assert runtime.stops == 1


def test_an_app_with_a_runtime_gets_a_lifecycle_and_others_none():
    runtime = _Runtime()
    app = SimpleNamespace(runtime=runtime)
    found = lifecycle_of(app)
    assert found is not None and found.runtime is runtime
    assert lifecycle_of(app) is found  # kept on the app
    assert lifecycle_of(SimpleNamespace()) is None
    assert lifecycle_of(None) is None


def test_the_caches_record_metrics_without_the_worker():
    """cache/ imports the instruments from cachework/, never worker/ (layers)."""
    code = (
        "import sys, cachework.cache.items.sync, cachework.instruments\n"
        "print(sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_signals_table_follows_a_workers_life():
    order = [signal for signal, _handler in SIGNALS]
    assert order.index(signals.worker_init) < order.index(signals.worker_process_init)
    assert order.index(signals.worker_process_shutdown) < order.index(signals.worker_shutdown)


def test_the_lifecycle_drives_the_runtime_the_app_has_now():
    first, second = _Runtime(), _Runtime()
    app = SimpleNamespace(runtime=first)
    node = WorkerLifecycle(app)
    app.runtime = second  # a test or an app that gives the app another runtime
    node.worker_shutdown()
    assert (first.stops, second.stops) == (0, 1)
