"""The Prometheus instruments of cachework (`prometheus_client`), one set per process.

The caches (`cache/items/sync.py`), the version import's task and the worker's sampler
record through the small `record_*` functions below; the worker serves them
(`worker/metrics.py`). Every name starts with `cachework_`; cached-table metrics carry a
`table` label.

A cached-table read is one hit (it found records in memory) or one miss (it did not: the
key is absent, which a loaded table knows without asking, or the source had to be asked;
`..._source_reads` counts the latter alone), so hits / (hits + misses) is the share of
reads that found what they asked for in memory. A task that failed on its caller's input
(`REJECTED_ERRORS`: a ValidationError, a name that does not exist) is counted with
outcome REJECTED, not FAILURE, so failure alerts fire on cachework's faults only.

Multiprocess mode (a worker node sums its pool children's values): prometheus_client
decides how values are stored when it is first imported, from PROMETHEUS_MULTIPROC_DIR.
So the worker's start names the folder (`use_multiprocess_dir`) before anything imports
prometheus_client, as dramatiq does, and the children it forks inherit it; nothing is
patched afterwards. prometheus_client is imported only when a metric is made or read.
"""

from __future__ import annotations

import bisect
import collections
import os
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cachework.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
IMPORT_OPERATIONS = ("created", "updated", "deleted", "unchanged")
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
FAILURE, REJECTED = "FAILURE", "REJECTED"  # task outcomes: cachework's fault, the caller's
REJECTED_ERRORS = (ValidationError, NotFoundError)  # bad input (TooLargeError included)


class Metrics:
    """The metric objects of one process (see `metrics()`)."""

    def __init__(self) -> None:
        import prometheus_client as prom  # here: the multiprocess folder is named by now

        self.registry = r = prom.CollectorRegistry(auto_describe=True)
        self._tables(prom, r)
        self._invalidation(prom, r)
        self._work(prom, r)

    def _tables(self, prom: Any, r: Any) -> None:
        self.table_hits = prom.Counter(
            "cachework_cached_table_hits", "Reads that found their records in the cached "
            "table's memory", ["table"], registry=r,
        )  # fmt: skip
        self.table_misses = prom.Counter(
            "cachework_cached_table_misses", "Reads that did not: the key is absent (known "
            "from memory) or the source was asked", ["table"], registry=r,
        )  # fmt: skip
        self.table_source_reads = prom.Counter(
            "cachework_cached_table_source_reads", "Misses sent to the source (uncovered, "
            "or invalidations kept arriving)", ["table"], registry=r,
        )  # fmt: skip
        self.table_refreshes = prom.Counter(
            "cachework_cached_table_refreshes", "Refreshes of invalidated records", ["table"],
            registry=r,
        )  # fmt: skip
        self.table_records = prom.Gauge(
            "cachework_cached_table_records", "Records held (summed over the processes)",
            ["table"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.table_invalid = prom.Gauge(
            "cachework_cached_table_invalid", "Records held but marked invalid (summed over "
            "the processes)", ["table"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip

    def _invalidation(self, prom: Any, r: Any) -> None:
        self.invalidation_events = prom.Counter(
            "cachework_invalidation_events", "Invalidation events read from the log, by "
            "outcome (applied, ignored: no cached table of that name, malformed)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.invalidation_lag = prom.Histogram(
            "cachework_invalidation_lag_seconds", "Seconds from publish (into the log) to "
            "apply in a process", buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.invalidation_drops = prom.Counter(
            "cachework_invalidation_drops", "Times a process dropped its cached tables "
            "(gap, unreachable log, new log)", registry=r,
        )  # fmt: skip
        self.invalidation_gaps = prom.Counter(
            "cachework_invalidation_gaps", "Times the log was trimmed past a cursor",
            registry=r,
        )  # fmt: skip
        self.invalidation_reconnects = prom.Counter(
            "cachework_invalidation_reconnects", "Listener reconnections to the log",
            registry=r,
        )  # fmt: skip
        self.listener_connected = prom.Gauge(
            "cachework_invalidation_listener_connected", "1 while a process's invalidation "
            "listener is connected to the log", registry=r, multiprocess_mode="liveall",
        )  # fmt: skip
        self.listener_last_contact = prom.Gauge(
            "cachework_invalidation_listener_last_contact_timestamp_seconds", "Unix time a "
            "process's listener was last connected to the log", registry=r,
            multiprocess_mode="liveall",
        )  # fmt: skip

    def _work(self, prom: Any, r: Any) -> None:
        """Version imports, project cache rebuilds and tasks."""
        self.import_rows = prom.Counter(
            "cachework_import_rows", "Rows of version imports by model and operation",
            ["model", "operation"], registry=r,
        )  # fmt: skip
        self.import_duration = prom.Histogram(
            "cachework_import_duration_seconds", "Duration of version imports (dry runs "
            "included) by outcome", ["outcome"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        # project cache rebuilds
        self.rebuilds = prom.Counter(
            "cachework_rebuilds", "Rebuild rounds of project cache items", ["app"], registry=r
        )
        self.rebuild_duration = prom.Histogram(
            "cachework_rebuild_duration_seconds", "Duration of rebuild rounds", ["app"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.rebuild_errors = prom.Counter(
            "cachework_rebuild_plugin_errors", "Rebuild rounds whose plugin raised", ["app"],
            registry=r,
        )  # fmt: skip
        self.rebuild_lock_waits = prom.Counter(
            "cachework_rebuild_lock_waits", "Rebuild requests that found the scope's lock held",
            ["app"], registry=r,
        )  # fmt: skip
        self.rebuild_deferrals = prom.Counter(
            "cachework_rebuild_deferrals", "Rebuild requests left to the live holder of the "
            "lock", ["app"], registry=r,
        )  # fmt: skip
        # data-driven rebuilds (worker/change_follower.py)
        self.item_changes = prom.Counter(
            "cachework_item_changes", "(project, item) scopes a committed change marked for "
            "a rebuild, by the change follower", ["app"], registry=r,
        )  # fmt: skip
        self.item_rebuilds_sent = prom.Counter(
            "cachework_item_rebuilds_sent", "Data-driven rebuilds sent (one per project and "
            "app)", ["app"], registry=r,
        )  # fmt: skip
        self.item_change_losses = prom.Counter(
            "cachework_item_change_losses", "Times the log lost entries the change follower "
            "had not read (every declared item then marked)", registry=r,
        )  # fmt: skip
        # tasks
        self.tasks = prom.Counter(
            "cachework_tasks", "Tasks run, by task name and outcome (SUCCESS, FAILURE, "
            "REJECTED: bad input, RETRY, ...)", ["task", "outcome"], registry=r,
        )  # fmt: skip
        self.task_duration = prom.Histogram(
            "cachework_task_duration_seconds", "Task run time by task name", ["task"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip


# --- this process's instruments --------------------------------------------------------------


class _Holder:
    """The one set of metric objects of this process: two objects of one name would
    overwrite each other's entries in a multiprocess file."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: Metrics | None = None


_holder = _Holder()


def metrics() -> Metrics:
    """This process's metric objects (made on first use)."""
    found = _holder.metrics
    if found is None:
        with _holder.lock:
            found = _holder.metrics
            if found is None:
                found = _holder.metrics = Metrics()
    return found


def reset() -> None:
    """Forget this process's metric objects: the next use starts from zero (tests)."""
    with _holder.lock:
        _holder.metrics = None


# --- multiprocess mode ------------------------------------------------------------------------


def _plain_values_made() -> bool:
    """Whether prometheus_client was imported already, storing values in this process."""
    values = sys.modules.get("prometheus_client.values")
    return values is not None and values.ValueClass is values.MutexValue


def use_multiprocess_dir(folder: str) -> bool:
    """At a worker's start, before it forks: this process and its children write their
    values to `folder`. False when prometheus_client was imported before in plain mode
    (a worker embedded in another program): values then stay in this process."""
    if _plain_values_made():
        return False
    os.environ[MULTIPROC_ENV] = folder
    return True


def forget_multiprocess_dir(folder: str) -> None:
    """At a worker's end: the folder named by `use_multiprocess_dir(folder)` is gone."""
    if os.environ.get(MULTIPROC_ENV) == folder:
        os.environ.pop(MULTIPROC_ENV, None)


def multiprocess_dir() -> str | None:
    """The folder this process writes its values to, or None (values in the process)."""
    folder = os.environ.get(MULTIPROC_ENV)
    return None if not folder or _plain_values_made() else folder


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
    """One rebuild round of plugin `app` (its plugin errors, if any). The app's error,
    lock wait and deferral counters are exported from its first round, at 0 until they
    move: `rate()` over a series that appears at 1 never sees that first error."""
    m = metrics()
    m.rebuilds.labels(app).inc()
    m.rebuild_duration.labels(app).observe(seconds)
    m.rebuild_lock_waits.labels(app)
    m.rebuild_deferrals.labels(app)
    failed = len(list(errors))
    m.rebuild_errors.labels(app).inc(failed)


def record_lock_wait(app: str) -> None:
    metrics().rebuild_lock_waits.labels(app).inc()


def record_deferral(app: str) -> None:
    metrics().rebuild_deferrals.labels(app).inc()


def record_item_changes(marked: dict[str, int], sent: dict[str, int], lost: bool) -> None:
    """One pass of the change follower: scopes marked and rebuilds sent, by app."""
    m = metrics()
    for app, count in marked.items():
        m.item_changes.labels(app).inc(count)
        m.item_rebuilds_sent.labels(app)
    for app, count in sent.items():
        m.item_rebuilds_sent.labels(app).inc(count)
    if lost:
        m.item_change_losses.inc()


def record_import(result: dict | None, seconds: float, outcome: str = "SUCCESS") -> None:
    """A version import's duration and (unless a dry run) its rows by model and operation,
    from its result (`ImportResult.as_dict()`); a FAILURE on bad input counts as REJECTED."""
    m = metrics()
    m.import_duration.labels(_noted_outcome(outcome)).observe(seconds)
    if not isinstance(result, dict) or result.get("dry_run"):
        return
    for model, counts in (result.get("models") or {}).items():
        for operation in IMPORT_OPERATIONS:  # each exported, at 0 when none (see above)
            value = counts.get(operation) if isinstance(counts, dict) else None
            m.import_rows.labels(model, operation).inc(
                value if isinstance(value, int) and value > 0 else 0
            )


def record_task(name: str, outcome: str, seconds: float | None) -> None:
    """One run of task `name` (its state; a FAILURE on bad input counts as REJECTED)."""
    m = metrics()
    m.tasks.labels(name, _noted_outcome(outcome, name)).inc()
    if seconds is not None:
        m.task_duration.labels(name).observe(seconds)


# --- task outcomes ----------------------------------------------------------------------------


def task_outcome(state: str, error: object = None) -> str:
    """The outcome label of a task that ended in `state` raising `error`: REJECTED for a
    FAILURE on the caller's input (`REJECTED_ERRORS`), else the state."""
    if state == FAILURE and isinstance(error, REJECTED_ERRORS):
        return REJECTED
    return state


class _Noted(threading.local):
    """The outcome of the task that last failed in this thread (a task and the signal that
    records it run in one thread, or greenlet)."""

    def __init__(self) -> None:
        self.failed: tuple[str, str] | None = None  # (task name, outcome)


_noted = _Noted()


def note_failure(name: str, error: object) -> None:
    """A task's failure, from its `on_failure` (`worker/task_base.py`), which Celery calls
    right before the postrun signal that records the task: why it failed decides whether
    the FAILURE it reports is counted as REJECTED. Celery passes the signal no error."""
    _noted.failed = (name, task_outcome(FAILURE, error))


def forget_failure() -> None:
    """A task starts in this thread: no failure noted before it is its own."""
    if _noted.failed is not None:
        _noted.failed = None


def _noted_outcome(state: str, name: str | None = None) -> str:
    """`state`, or REJECTED for a FAILURE noted as bad input (of task `name`, if given)."""
    failed = _noted.failed
    if state != FAILURE or failed is None or (name is not None and failed[0] != name):
        return state
    return failed[1]


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
