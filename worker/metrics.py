"""Prometheus metrics of cachework (`prometheus_client`), correct under the prefork pool.

Every name starts with `cachework_`; cached-table metrics carry a `table` label. What is
measured and where:

- Cached tables count their own reads (each read exactly one hit or one miss), refreshes,
  records and invalid records without any metrics call on the read path (`stats()`). A
  `Sampler` thread of the runtime copies them into the counters and gauges about once a
  second, after every task and when the process stops; a single-process exporter copies
  them right before each scrape.
- Invalidation: events applied, ignored and malformed, drops, gaps and reconnects come
  from the tracker's statistics the same way; the lag from publish to apply is observed
  for each applied event whose publish time is known: a Redis Stream id is the
  millisecond it was added; the database log on PostgreSQL reads each row's `created_at`
  with it (on SQLite, whose timestamps have whole seconds, its events give no lag).
  Each process also reports its listener as connected or not and the last time it was
  in touch with the log (per pid), which is what readiness checks against
  `CACHEWORK_LISTENER_STALE_AFTER`.
- Rebuilds (`cache/items/sync.py`), imports and tasks report through the small `record_*`
  functions below.

Prefork: the worker's main process calls `enable_multiprocess(folder)` before it forks
(`worker/node_metrics.py`), so every child writes its values to its own files in that
folder (prometheus_client's multiprocess mode) and an exporter sums the children. Metric
objects are per process by nature (one set per process: two objects of one name would
overwrite each other's file entries), so this module keeps the one set of this process.
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from cache.invalidation.listener import Tracker
    from worker.runtime import Runtime

log = logging.getLogger(__name__)
SAMPLE_EVERY = 1.0  # seconds between two samples of a runtime's tables and listener
TABLE_COUNTERS = ("hits", "misses", "refreshes")
EVENT_OUTCOMES = ("applied", "ignored", "malformed")
LISTENER_COUNTERS = ("drops", "gaps", "reconnects")
IMPORT_OPERATIONS = ("created", "updated", "deleted", "unchanged")
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class Metrics:
    """The metric objects of one process (see `metrics()`)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        # cached tables
        self.table_hits = Counter(
            "cachework_cached_table_hits", "Reads answered from the cached table", ["table"],
            registry=r,
        )  # fmt: skip
        self.table_misses = Counter(
            "cachework_cached_table_misses", "Reads sent to the source (uncovered, or "
            "invalidations kept arriving)", ["table"], registry=r,
        )  # fmt: skip
        self.table_refreshes = Counter(
            "cachework_cached_table_refreshes", "Refreshes of invalidated records", ["table"],
            registry=r,
        )  # fmt: skip
        self.table_records = Gauge(
            "cachework_cached_table_records", "Records held (summed over the processes)",
            ["table"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.table_invalid = Gauge(
            "cachework_cached_table_invalid", "Records held but marked invalid (summed over "
            "the processes)", ["table"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        # invalidation
        self.invalidation_events = Counter(
            "cachework_invalidation_events", "Invalidation events read from the log, by "
            "outcome (applied, ignored: no cached table of that name, malformed)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.invalidation_lag = Histogram(
            "cachework_invalidation_lag_seconds", "Seconds from publish (into the log) to "
            "apply in a process", buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.invalidation_drops = Counter(
            "cachework_invalidation_drops", "Times a process dropped its cached tables "
            "(gap, unreachable log, new log)", registry=r,
        )  # fmt: skip
        self.invalidation_gaps = Counter(
            "cachework_invalidation_gaps", "Times the log was trimmed past a cursor",
            registry=r,
        )  # fmt: skip
        self.invalidation_reconnects = Counter(
            "cachework_invalidation_reconnects", "Listener reconnections to the log",
            registry=r,
        )  # fmt: skip
        self.listener_connected = Gauge(
            "cachework_invalidation_listener_connected", "1 while a process's invalidation "
            "listener is connected to the log", registry=r, multiprocess_mode="liveall",
        )  # fmt: skip
        self.listener_last_contact = Gauge(
            "cachework_invalidation_listener_last_contact_timestamp_seconds", "Unix time a "
            "process's listener was last connected to the log", registry=r,
            multiprocess_mode="liveall",
        )  # fmt: skip
        # version imports
        self.import_rows = Counter(
            "cachework_import_rows", "Rows of version imports by model and operation",
            ["model", "operation"], registry=r,
        )  # fmt: skip
        self.import_duration = Histogram(
            "cachework_import_duration_seconds", "Duration of version imports (dry runs "
            "included) by outcome", ["outcome"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        # project cache rebuilds
        self.rebuilds = Counter(
            "cachework_rebuilds", "Rebuild rounds of project cache items", ["app"], registry=r
        )
        self.rebuild_duration = Histogram(
            "cachework_rebuild_duration_seconds", "Duration of rebuild rounds", ["app"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.rebuild_errors = Counter(
            "cachework_rebuild_plugin_errors", "Rebuild rounds whose plugin raised", ["app"],
            registry=r,
        )  # fmt: skip
        self.rebuild_lock_waits = Counter(
            "cachework_rebuild_lock_waits", "Rebuild requests that found the scope's lock held",
            ["app"], registry=r,
        )  # fmt: skip
        self.rebuild_deferrals = Counter(
            "cachework_rebuild_deferrals", "Rebuild requests left to the live holder of the "
            "lock", ["app"], registry=r,
        )  # fmt: skip
        # tasks
        self.tasks = Counter(
            "cachework_tasks", "Tasks run, by task name and outcome (SUCCESS, FAILURE, RETRY, "
            "...)", ["task", "outcome"], registry=r,
        )  # fmt: skip
        self.task_duration = Histogram(
            "cachework_task_duration_seconds", "Task run time by task name", ["task"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip


# --- this process's metrics ------------------------------------------------------------------

_lock = threading.Lock()
_current: dict[str, Any] = {
    "metrics": None,
    "multiprocess_dir": None,
    "active": False,  # a sampler thread runs
    "listener_only": False,  # nobody scrapes: samplers copy only the listener's state
}


def metrics() -> Metrics:
    """This process's metric objects (made on first use)."""
    found = _current["metrics"]
    if found is None:
        with _lock:
            found = _current["metrics"]
            if found is None:
                found = _current["metrics"] = Metrics()
    return found


def enable_multiprocess(folder: str, exported: bool = True) -> None:
    """Before forking: this process and its children write their values to `folder`
    (which the caller made, empty), to be summed by `multiprocess_registry(folder)`.
    `exported` False: nobody scrapes them, only readiness reads the listeners' state, so
    the samplers copy that alone (copying lag and table statistics at 1,000 events/s
    raised the fan-out's p99 from 5 to 15-27 ms, bench/invalidation.py)."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    with _lock:
        values.ValueClass = values.MultiProcessValue()
        _current.update(
            metrics=None, multiprocess_dir=folder, active=True, listener_only=not exported
        )


def disable_multiprocess() -> None:
    """Back to plain in-process values (tests)."""
    from prometheus_client import values

    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with _lock:
        values.ValueClass = values.MutexValue
        _current.update(metrics=None, multiprocess_dir=None, active=False, listener_only=False)


def multiprocess_dir() -> str | None:
    return _current["multiprocess_dir"]


def active() -> bool:
    """Whether this process exports its metrics (or a parent sums them): only then does a
    runtime run its sampler thread."""
    return bool(_current["active"])


def listener_only() -> bool:
    """Whether nobody scrapes this process's metrics, so a sampler keeps only what
    readiness reads: its listener's state."""
    return bool(_current["listener_only"])


def activate() -> None:
    _current.update(active=True, listener_only=False)


def mark_process_dead(pid: int | None = None) -> None:
    """A child that ends: its per-process gauges leave the sums (its counters stay)."""
    folder = multiprocess_dir()
    if folder is not None and os.path.isdir(folder):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid(), folder)


def multiprocess_registry(folder: str) -> CollectorRegistry:
    """A registry that sums the values every process wrote to `folder`."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)


# --- what the code reports ------------------------------------------------------------------


def record_rebuild(app: str, seconds: float, errors: Iterable[object] = ()) -> None:
    """One rebuild round of plugin `app` (its plugin errors, if any)."""
    m = metrics()
    m.rebuilds.labels(app).inc()
    m.rebuild_duration.labels(app).observe(seconds)
    failed = len(list(errors))
    if failed:
        m.rebuild_errors.labels(app).inc(failed)


def record_lock_wait(app: str) -> None:
    metrics().rebuild_lock_waits.labels(app).inc()


def record_deferral(app: str) -> None:
    metrics().rebuild_deferrals.labels(app).inc()


def record_import(result: dict | None, seconds: float, outcome: str = "SUCCESS") -> None:
    """A version import's duration and (unless a dry run) its rows by model and operation,
    from its result (`ImportResult.as_dict()`)."""
    m = metrics()
    m.import_duration.labels(outcome).observe(seconds)
    if not isinstance(result, dict) or result.get("dry_run"):
        return
    for model, counts in (result.get("models") or {}).items():
        for operation in IMPORT_OPERATIONS:
            value = counts.get(operation) if isinstance(counts, dict) else None
            if isinstance(value, int) and value > 0:
                m.import_rows.labels(model, operation).inc(value)


def record_task(name: str, outcome: str, seconds: float | None) -> None:
    m = metrics()
    m.tasks.labels(name, outcome).inc()
    if seconds is not None:
        m.task_duration.labels(name).observe(seconds)


# --- copying a runtime's own counters --------------------------------------------------------


def publish_time(event_id: str) -> float | None:
    """When an event was published, from its id: a Redis Stream id starts with the Unix
    time in ms; the database log's ids carry no time (None: the log's batch tells)."""
    head, dash, _seq = event_id.partition("-")
    if not dash or not head.isdigit():
        return None
    return int(head) / 1000.0


class Sampler:
    """Copies a runtime's cached-table and listener statistics into the metrics: counters
    by the increase since the last copy, gauges as they are. `sync()` is thread-safe; a
    daemon thread (`start()`) calls it every `every` seconds and once more at `stop()`."""

    name = "cachework-metrics"

    def __init__(self, runtime: Runtime, every: float = SAMPLE_EVERY) -> None:
        self.runtime = runtime
        self.every = every
        self._seen: dict[tuple[str, str], int] = {}
        self._last_event: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_contact: float | None = None  # Unix time the listener was last connected

    def _delta(self, key: tuple[str, str], value: object) -> int:
        if not isinstance(value, int):
            return 0
        before = self._seen.get(key, 0)
        self._seen[key] = value
        return value - before if value >= before else value  # a reset counter starts over

    def sync(self) -> None:
        with self._lock:
            m = metrics()
            registry = self.runtime._registry  # never built here: an idle process has none
            if registry is None:
                return
            if listener_only():  # only readiness reads this node's folder
                self._listener_state(m)
                return
            for table, stats in registry.status().items():
                for counter, name in zip(
                    (m.table_hits, m.table_misses, m.table_refreshes), TABLE_COUNTERS, strict=True
                ):
                    delta = self._delta((table, name), stats.get(name))
                    if delta:
                        counter.labels(table).inc(delta)
                m.table_records.labels(table).set(stats.get("records") or 0)
                m.table_invalid.labels(table).set(stats.get("invalid") or 0)
            self._sync_listener(m, registry.listener)

    def _sync_listener(self, m: Metrics, stats: dict) -> None:
        for outcome in EVENT_OUTCOMES:
            delta = self._delta(("", outcome), stats.get(outcome))
            if delta:
                m.invalidation_events.labels(outcome).inc(delta)
        for counter, name in zip(
            (m.invalidation_drops, m.invalidation_gaps, m.invalidation_reconnects),
            LISTENER_COUNTERS,
            strict=True,
        ):
            delta = self._delta(("", name), stats.get(name))
            if delta:
                counter.inc(delta)
        tracker = self._listener_state(m)
        if tracker is not None:
            self._observe_lag(m, list(tracker.recent))

    def _listener_state(self, m: Metrics) -> Tracker | None:
        """The listener's connected state and last contact (what readiness reads); the
        tracker, or None when this process has no cached tables (no listener)."""
        tracker = self.runtime._tracker
        if tracker is None:
            return None
        now = time.time()
        if bool(tracker.stats.get("connected")) and self.runtime.listening:
            self.last_contact = now
        elif self.last_contact is None:
            self.last_contact = now  # a listener starting has `stale_after` to connect
        m.listener_connected.set(1 if self.last_contact == now else 0)
        m.listener_last_contact.set(self.last_contact)
        return tracker

    def _observe_lag(self, m: Metrics, recent: list[tuple[str, float, float | None]]) -> None:
        """The lag of each event applied since the last sample (newest first, back to the
        last one seen: ids grow in the order events are applied)."""
        from cache.invalidation.events import id_key

        last = None if self._last_event is None else id_key(self._last_event)
        lags = []
        for event_id, applied_at, published_at in reversed(recent):
            if last is not None and id_key(event_id) <= last:
                break
            published = published_at if published_at is not None else publish_time(event_id)
            if published is not None:
                lags.append(max(0.0, applied_at - published))
        observe_many(m.invalidation_lag, lags)
        if recent:
            self._last_event = recent[-1][0]

    def start(self) -> Sampler:
        """Start the sampling thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self.sync()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self.every):
            try:
                self.sync()
            except Exception:  # never let metrics take a process down
                log.exception("copying statistics into the metrics failed")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread, then copy once more (nothing counted is left out)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None:
            return  # not sampling (a scrape copies first): nothing to add
        try:
            self.sync()
        except Exception:
            log.exception("copying statistics into the metrics failed")


def observe_many(histogram: Any, amounts: list[float]) -> None:
    """`histogram.observe(a)` for each of `amounts`, as one increment per bucket and one of
    the sum: in multiprocess mode each increment is a locked write to a file, and a
    sampler at 1,000 events/s observing one by one held a child long enough to triple the
    fan-out's p99 (bench/invalidation.py). prometheus_client keeps per-bucket (not
    cumulative) counts in `_buckets` with their bounds in `_upper_bounds`; a histogram
    without them is observed one by one."""
    if not amounts:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    total.inc(sum(amounts))
    for index, count in collections.Counter(
        bisect.bisect_left(bounds, amount) for amount in amounts
    ).items():
        buckets[index].inc(count)


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
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from worker.probes import LIVE_PATH, METRICS_PATH, READY_PATH

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
    import socket

    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def start_http_server(
    runtime: Runtime, port: int | None = None, addr: str | None = None
) -> MetricsServer:
    """Serve this process's metrics and readiness (a web process that started its runtime):
    `/metrics`, `/ready` (database, Redis and its eviction policy, this process's
    listener; in parallel, within `worker.probes.READY_TIMEOUT`) and `/live` (the process
    alone). Port and address default to CACHEWORK_METRICS_PORT and CACHEWORK_METRICS_BIND;
    port 0 picks a free one (`server.port`). `server.stop()` at shutdown."""
    from cachework import redis_policy
    from worker import process_health as health
    from worker.probes import READY_TIMEOUT, Checks

    settings = runtime.settings
    port = settings.metrics_port if port is None else port
    if port is None:
        raise ValueError("no port: pass one or set CACHEWORK_METRICS_PORT")
    folder = multiprocess_dir() or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    activate()

    def render() -> bytes:
        runtime.sampler.sync()
        if folder:
            return exposition(multiprocess_registry(folder))
        return exposition(metrics().registry)

    checks = Checks(READY_TIMEOUT)

    def live() -> list[str]:
        # This server's thread answering is the whole of it: a liveness that followed the
        # database or Redis would restart every web pod during their outage.
        return []

    def redis() -> list[str]:
        down = health.check_redis(settings.redis_url, READY_TIMEOUT)
        return [down] if down else redis_policy.eviction_problems(settings, timeout=READY_TIMEOUT)

    def ready() -> list[str]:
        return checks.run(
            {
                "database": lambda: health.check_database(settings.database_url, READY_TIMEOUT),
                "Redis": redis,
                "listener": lambda: health.runtime_listener(runtime),
            }
        )

    return MetricsServer(port, addr or settings.metrics_bind, render, ready, live).start()
