"""A worker node's metrics: multiprocess mode across the pool, the exporter, task metrics.

Connected to Celery's signals when `worker.celery_app` is imported:

- `worker_init` (main process, before the pool forks): a fresh folder for the node's
  metric files (`cachework-metrics-*` in the temporary directory) and prometheus_client's
  multiprocess mode on, always: readiness (`worker/health.py`) reads every child's
  listener state from there. With CACHEWORK_METRICS_PORT set, also the exporter
  (`worker/exporter.py`) started beside the main process, which stays free of threads
  (it forks children).
- every child's runtime samples its tables and listener once a second
  (`worker.metrics.Sampler`; without the exporter only its listener's state), and at its
  end (`worker_process_shutdown`) copies a last time and is marked dead.
- `task_prerun`/`task_postrun`, only with the exporter (nobody could read them
  otherwise; recording them cost a no-op task's round trip about 0.3 ms, measured with
  bench/invalidation.py): task run time and outcome by name; the version import's rows
  and duration from its result; a sample at the task's end.
- `worker_shutdown`: the exporter stops and the folder is removed.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

from celery import signals

from worker import metrics, routing

log = logging.getLogger(__name__)
IMPORT_TASK = routing.IMPORT_VERSIONS
EXPORTER_START_TIMEOUT = 20.0
_node: dict = {}  # this main process's metrics folder and exporter
_started: dict[str, float] = {}  # task id -> perf_counter at prerun (this process)


def _runtime(app):
    return getattr(app, "runtime", None)


@signals.worker_init.connect
def _node_init(sender=None, **_kwargs) -> None:
    runtime = _runtime(getattr(sender, "app", None))
    if runtime is None:
        return
    folder = tempfile.mkdtemp(prefix="cachework-metrics-")
    # Removed at worker_shutdown; also when the worker stops before that (a start-up error).
    atexit.register(_remove_folder, folder, os.getpid())
    metrics.enable_multiprocess(folder, exported=runtime.settings.metrics_port is not None)
    _node["folder"] = folder
    if runtime.settings.metrics_port is not None:
        _node["exporter"] = start_exporter(folder, getattr(sender, "hostname", "") or "")


def _recording_tasks() -> bool:
    """Whether this process's metrics are exported (set before the pool forks)."""
    return metrics.active() and not metrics.listener_only()


def _remove_folder(folder: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def start_exporter(folder: str, node: str) -> subprocess.Popen:
    """Start the exporter process; exit the worker with one line if it cannot listen."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.exporter", folder, str(os.getpid()), node],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    line = b""
    deadline = time.monotonic() + EXPORTER_START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            break
    text = line.decode(errors="replace").strip()
    if not text.startswith("listening"):
        stop_exporter(proc)
        shutil.rmtree(_node.get("folder", ""), ignore_errors=True)
        sys.stderr.write(f"error: {text or 'the metrics exporter did not start'}\n")
        sys.stderr.flush()
        raise SystemExit(2)
    proc.stdout.close()
    log.info("metrics exporter %s", text)
    return proc


def stop_exporter(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.close()


@signals.worker_process_shutdown.connect
def _child_shutdown(**_kwargs) -> None:
    """A pool child ending: stop its runtime (a last copy of its statistics), then leave
    the per-process gauges."""
    from worker.celery_app import _child_runtime

    runtime = _child_runtime()
    if runtime is not None and metrics.multiprocess_dir() is not None:
        runtime.stop()
        metrics.mark_process_dead()


@signals.worker_shutdown.connect
def _node_shutdown(**_kwargs) -> None:
    proc = _node.pop("exporter", None)
    if proc is not None:
        stop_exporter(proc)
    folder = _node.pop("folder", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        # A worker run inside another program (tests, an embedded worker) leaves it as it was.
        metrics.disable_multiprocess()


@signals.task_prerun.connect
def _task_started(task_id=None, **_kwargs) -> None:
    if task_id and _recording_tasks():
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id=None, task=None, retval=None, state=None, **_kwargs) -> None:
    if not _recording_tasks():
        return
    started = _started.pop(task_id, None) if task_id else None
    seconds = None if started is None else time.perf_counter() - started
    name = getattr(task, "name", None) or "unknown"
    metrics.record_task(name, str(state or "UNKNOWN"), seconds)
    if name == IMPORT_TASK and seconds is not None:
        metrics.record_import(retval if state == "SUCCESS" else None, seconds, str(state))
    runtime = _runtime(getattr(task, "app", None))
    if runtime is not None:
        runtime.sampler.sync()
