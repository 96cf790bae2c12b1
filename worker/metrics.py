"""Prometheus metrics of cachework, served: what a process or a worker node exports.

The instruments and what the code records live in `cachework/instruments.py` (the caches
record rebuilds there without importing the worker); a runtime's `Sampler`
(`worker/sampler.py`) copies its tables' and listener's statistics into them. This module
serves them: `MetricsServer` (`/metrics`, `/ready`, `/live`) for a node's exporter
(`worker/exporter.py`) and `start_http_server(runtime)` for a web process.

Prefork: the worker's start names the node's metrics folder before prometheus_client is
imported (`worker/lifecycle.py`), so every child writes its values to its own files there
(prometheus_client's multiprocess mode) and the exporter sums them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from cachework.instruments import (
    DURATION_BUCKETS,
    IMPORT_OPERATIONS,
    LAG_BUCKETS,
    REJECTED,
    REJECTED_ERRORS,
    Metrics,
    exposition,
    mark_process_dead,
    metrics,
    multiprocess_dir,
    multiprocess_registry,
    observe_many,
    record_deferral,
    record_import,
    record_lock_wait,
    record_rebuild,
    record_task,
    reset,
    task_outcome,
)
from cachework.worker import health
from cachework.worker.probes import LIVE_PATH, METRICS_PATH, READY_PATH, READY_TIMEOUT, Checks
from cachework.worker.sampler import (
    EVENT_OUTCOMES,
    LISTENER_COUNTERS,
    SAMPLE_EVERY,
    TABLE_COUNTERS,
    Sampler,
    publish_time,
)

if TYPE_CHECKING:
    from cachework.worker.runtime import Runtime

__all__ = [
    "DURATION_BUCKETS",
    "EVENT_OUTCOMES",
    "IMPORT_OPERATIONS",
    "LAG_BUCKETS",
    "LISTENER_COUNTERS",
    "REJECTED",
    "REJECTED_ERRORS",
    "SAMPLE_EVERY",
    "TABLE_COUNTERS",
    "Metrics",
    "MetricsServer",
    "Sampler",
    "disable_multiprocess",
    "exposition",
    "mark_process_dead",
    "metrics",
    "multiprocess_dir",
    "multiprocess_registry",
    "observe_many",
    "publish_time",
    "record_deferral",
    "record_import",
    "record_lock_wait",
    "record_rebuild",
    "record_task",
    "start_http_server",
    "task_outcome",
]
log = logging.getLogger(__name__)


def disable_multiprocess() -> None:
    """This process's metrics start again from zero (tests; the name is the old one: the
    mode itself is fixed when prometheus_client is imported)."""
    reset()


# --- serving ---------------------------------------------------------------------------------


class MetricsServer:
    """`GET /metrics` (Prometheus text), `GET /ready` and `GET /live` (200 "ok", or 503
    with one line per problem) on `addr:port`, in a daemon thread."""

    def __init__(
        self,
        port: int,
        addr: str,
        render: Callable[[], bytes],
        ready: Callable[[], list[str]],
        live: Callable[[], list[str]],
    ) -> None:
        routes = {METRICS_PATH: None, READY_PATH: ready, LIVE_PATH: live}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path not in routes:
                    self._send(404, b"not found: try /metrics, /ready or /live\n")
                    return
                try:
                    check = routes[path]
                    if check is None:
                        self._send(200, render(), "text/plain; version=0.0.4; charset=utf-8")
                        return
                    problems = check()
                except Exception as exc:
                    log.exception("metrics endpoint %s failed", path)
                    problems = [f"{path} failed: {exc.__class__.__name__}: {exc}"]
                body = "\n".join(problems) if problems else "ok"
                self._send(503 if problems else 200, (body + "\n").encode())

            def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        ThreadingHTTPServer.address_family = _family(addr)
        self.httpd = ThreadingHTTPServer((addr, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="cachework-metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def start_http_server(
    runtime: Runtime, port: int | None = None, addr: str | None = None
) -> MetricsServer:
    """Serve this process's metrics and readiness (a web process that started its runtime):
    `/metrics`, `/ready` (database, Redis and its eviction policy, this process's
    listener; in parallel, within `cachework.worker.probes.READY_TIMEOUT`) and `/live` (the process
    alone: this server's thread answering; a liveness that followed the database or Redis
    would restart every web pod during their outage). Port and address default to
    CACHEWORK_METRICS_PORT and CACHEWORK_METRICS_BIND; port 0 picks a free one
    (`server.port`). `server.stop()` at shutdown."""
    settings = runtime.settings
    port = settings.metrics_port if port is None else port
    if port is None:
        raise ValueError("no port: pass one or set CACHEWORK_METRICS_PORT")
    folder = multiprocess_dir()
    runtime.sampler.listener_only = False  # scraped: every statistic is copied
    checks = Checks(READY_TIMEOUT)

    def render() -> bytes:
        runtime.sampler.sync()
        if folder:
            return exposition(multiprocess_registry(folder))
        return exposition(metrics().registry)

    def ready() -> list[str]:
        return health.process_readiness(runtime, READY_TIMEOUT, checks)

    return MetricsServer(
        port, addr or settings.metrics_bind, render, ready, health.process_live
    ).start()
