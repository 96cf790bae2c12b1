"""Copying a runtime's own counters into the metrics (`Sampler`).

Cached tables count their own reads (each read exactly one hit or one miss: a lookup of an
absent key is a miss; the misses the source answered are also source reads), refreshes,
records and invalid records without any metrics call on the read path (`stats()`); the
tracker counts events applied, ignored and malformed, drops, gaps and reconnects. A
runtime's `Sampler` copies them into the instruments (`cachework/instruments.py`) about
once a second in a thread (a worker's processes), after every task and when the process
stops; a single-process server copies them right before each scrape. Every counter of a
table is exported from its first copy, at 0 until it moves: a series that appears only on
its first increment leaves a dashboard's ratio (hits over hits + misses) empty, and
`rate()` misses the first increment. It also observes the lag from publish to apply of
each event whose publish time is known (a Redis Stream id is the millisecond it was
added; the database log on PostgreSQL reads each row's `created_at`; on SQLite, whose
timestamps have whole seconds, its events give no lag), and reports the listener as
connected or not and its last contact with the log (per pid), which readiness checks
against CACHEWORK_LISTENER_STALE_AFTER.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from cachework.cache.invalidation.events import id_key
from cachework.instruments import Metrics, metrics, observe_many

if TYPE_CHECKING:
    from cachework.cache.invalidation.listener import Tracker
    from cachework.cache.tables.registry import Registry

log = logging.getLogger(__name__)
SAMPLE_EVERY = 1.0  # seconds between two samples of a runtime's tables and listener
TABLE_COUNTERS = ("hits", "misses", "source_reads", "refreshes")
EVENT_OUTCOMES = ("applied", "ignored", "malformed")
LISTENER_COUNTERS = ("drops", "gaps", "reconnects")


def publish_time(event_id: str) -> float | None:
    """When an event was published, from its id: a Redis Stream id starts with the Unix
    time in ms; the database log's ids carry no time (None: the log's batch tells)."""
    head, dash, _seq = event_id.partition("-")
    if not dash or not head.isdigit():
        return None
    return int(head) / 1000.0


class Sampled(Protocol):
    """What a sampler reads of a runtime: the parts it has made so far, read as they are
    (never through the properties that would make them in an idle process)."""

    _registry: Registry | None
    _tracker: Tracker | None

    @property
    def listening(self) -> bool: ...


class Sampler:
    """Copies a runtime's cached-table and listener statistics into the metrics: counters
    by the increase since the last copy, gauges as they are. `sync()` is thread-safe; a
    daemon thread (`start()`) calls it every `every` seconds and once more at `stop()`."""

    name = "cachework-metrics"

    def __init__(
        self, runtime: Sampled, every: float = SAMPLE_EVERY, *, listener_only: bool = False
    ) -> None:
        self.runtime = runtime
        self.every = every
        # Nobody scrapes this process (a worker node without exporter): copy only what
        # readiness reads, its listener's state (copying lag and table statistics at 1,000
        # events/s raised the fan-out's p99 from 5 to 15-27 ms, bench/invalidation.py).
        self.listener_only = listener_only
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
            if self.listener_only:  # only readiness reads this node's folder
                self._listener_state(m)
                return
            counters = (m.table_hits, m.table_misses, m.table_source_reads, m.table_refreshes)
            for table, stats in registry.status().items():
                for counter, name in zip(counters, TABLE_COUNTERS, strict=True):
                    child = counter.labels(table)  # exported at 0 before its first increment
                    delta = self._delta((table, name), stats.get(name))
                    if delta:
                        child.inc(delta)
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
