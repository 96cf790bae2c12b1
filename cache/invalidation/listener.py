"""Following the log in one process: the tracker (cursor, gap handling, applying events)
and the listener thread that tails the log on a reconnecting loop with hooks.

The tracker is the one place events are applied, by the listener thread and by the
task-start catch-up alike, under one lock. Its state lives on the target (the process's
cached-table registry): `target.cursor` is the id of the last event applied and
`target.listener` holds the stats and the log's epoch. A process that might have missed
events (a gap, a new epoch, an unreachable log) drops its cached tables, which reload on
their next read: never a silent stale read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Protocol

from cachework.cache.invalidation.events import (
    MAX_EVENT_CHARS,
    Event,
    decode_event,
    id_key,
    is_after,
    table_of,
)
from cachework.cache.invalidation.log import (
    LISTEN_BLOCK,
    NOTHING,
    Batch,
    InvalidationLog,
    LogError,
    LogState,
    LogUnavailable,
)
from cachework.errors import CacheworkError, TransientError, ValidationError

log = logging.getLogger(__name__)


class Target(Protocol):
    """What the listener invalidates: a process's cached-table registry.

    Optionally it has `status()` (table name -> stats with "loaded"), which tells the
    tracker whether records were loaded before it first reached the log."""

    cursor: str
    listener: dict

    def names(self) -> list[str]: ...
    def coerce_key(self, name: str, key: object) -> object: ...
    def invalidate(self, name: str, keys: list | None) -> None: ...
    def drop_all(self, reason: str) -> None: ...


STAT_KEYS = (
    "applied",
    "ignored",
    "malformed",
    "foreign",
    "gaps",
    "drops",
    "reconnects",
    "catch_ups",
)


class RateLimitedWarnings:
    """At most `burst` warnings per `period` seconds; then one line saying how many
    were left out (a flood of junk entries must not flood the log)."""

    def __init__(self, logger: logging.Logger, burst: int = 10, period: float = 60.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self._start = time.monotonic()
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.period:
                if self._suppressed:
                    self.logger.warning(
                        "%d similar warning(s) left out in the last %.0fs",
                        self._suppressed,
                        now - self._start,
                    )
                self._start, self._count, self._suppressed = now, 0, 0
            if self._count >= self.burst:
                self._suppressed += 1
                return
            self._count += 1
        self.logger.warning(message, *args)


class Tracker:
    """This process's position in the log; applies events to `target`, drops on doubt."""

    def __init__(
        self,
        target: Target,
        log: InvalidationLog,
        *,
        max_keys: int = 10_000,
        batch: int = 500,
        recent: int = 4096,
    ) -> None:
        self.target = target
        self.log = log
        self.max_keys = max_keys
        self.batch = batch
        # (id, applied at, published at or None: then the id may tell, see metrics)
        self.recent: deque[tuple[str, float, float | None]] = deque(maxlen=recent)
        # Ids of foreign entries already applied (see `Batch.foreign`), oldest first.
        self._foreign_seen: dict[str, None] = {}
        self._foreign_max = recent
        self._lock = threading.RLock()
        self._warnings = RateLimitedWarnings(logging.getLogger(__name__))
        stats = target.listener
        for key in STAT_KEYS:
            stats.setdefault(key, 0)
        stats.setdefault("epoch", None)
        stats.setdefault("connected", False)
        stats.setdefault("last_drop", None)

    @property
    def cursor(self) -> str:
        return self.target.cursor

    @property
    def stats(self) -> dict:
        return self.target.listener

    # --- reading ------------------------------------------------------------------------

    def sync(self, source: InvalidationLog | None = None) -> int:
        """Apply what this process has not seen yet: one `state()` call when up to date.

        Raises LogUnavailable if the log cannot be reached."""
        source = source or self.log
        with self._lock:
            state = source.state()
            if self.stats["epoch"] is None or state.epoch != self.stats["epoch"]:
                self._adopt(state)
                return 0
            if id_key(state.head) == id_key(self.cursor):
                return 0
            return self._drain(source)  # a head behind the cursor reads as a gap

    def poll(self, source: InvalidationLog | None = None) -> int:
        """Read and apply whatever follows the cursor (the listener's step)."""
        source = source or self.log
        with self._lock:
            if self.stats["epoch"] is None:
                self._adopt(source.state())
                return 0
            return self._drain(source)

    def listen(self, source: InvalidationLog, timeout: float, stop: threading.Event) -> int:
        """The listener's step: wait up to `timeout` for entries after the cursor and apply
        them; returns how many were applied.

        A log with `follow` (Redis) is read in one blocking call, outside the lock (a task
        start's `sync()` never waits for it), and its entries are applied as read when the
        log confirms the cursor's entry was still there after the read: entries are trimmed
        oldest first, so none between the cursor and the first one read was lost. Anything
        else (no confirmation, a cursor that moved meanwhile, no cursor yet) goes through
        `poll()`, the full read with the epoch and gap checks. A restart or failover breaks
        the connection, and the listener's reconnect runs that full read first."""
        follow = getattr(source, "follow", None)
        with self._lock:
            cursor, epoch = self.cursor, self.stats["epoch"]
        if follow is None or epoch is None or cursor == NOTHING:
            applied = self.poll(source)
            if applied == 0:
                source.wait(self.cursor, timeout, stop)
            return applied
        if stop.is_set():
            return 0
        entries, confirmed = follow(cursor, self.batch, timeout)
        if not entries:
            return 0
        with self._lock:
            if self.cursor != cursor or self.stats["epoch"] != epoch:
                return 0  # a catch-up or a drop moved the cursor meanwhile: read again
            if not confirmed:  # the cursor's entry is gone: the checked read decides
                return self._drain(source)
            return self._apply(Batch(epoch, False, entries))

    def catch_up(self) -> int:
        """`sync()` for the start of a task: never raises; if the log cannot be reached,
        the cached tables are dropped (the task then reads fresh records)."""
        try:
            applied = self.sync()
        except (LogUnavailable, LogError) as exc:
            self.drop(f"invalidation log unreachable at task start ({exc})")
            return 0
        except Exception as exc:
            log.exception("invalidation catch-up failed")
            self.drop(f"invalidation catch-up failed ({exc.__class__.__name__}: {exc})")
            return 0
        if applied:
            self.stats["catch_ups"] += 1
        return applied

    def wait_for(self, event_id: str, timeout: float = 5.0) -> None:
        """Return once event `event_id` is applied here (or the tables were dropped after it
        was published); TransientError naming it after `timeout` seconds."""
        target = id_key(event_id)
        drops = self.stats["drops"]
        deadline = time.monotonic() + timeout
        while True:
            if id_key(self.cursor) >= target or self.stats["drops"] > drops:
                return
            self.catch_up()
            if id_key(self.cursor) >= target or self.stats["drops"] > drops:
                return
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"invalidation event_id={event_id!r} was not applied within {timeout}s "
                    f"(this process is at {self.cursor!r})"
                )
            time.sleep(0.01)

    def drop(self, reason: str) -> None:
        """Drop every cached table of the target (they reload on their next read)."""
        with self._lock:
            self._warnings.warning("dropping cached tables: %s", reason)
            self.target.drop_all(reason)
            self.stats["drops"] += 1
            self.stats["last_drop"] = reason

    def apply_unlogged(self, raws: list[str]) -> int:
        """Apply committed events that are not in the log yet (this process's own commit,
        or outbox rows a task start found waiting for the relay); the cursor stays where
        it is, and the log brings them again later (applying twice is harmless)."""
        with self._lock:
            names = set(self.target.names())
            applied = 0
            drop: str | None = None
            for raw in raws:
                try:
                    event = decode_event(raw, max_keys=MAX_EVENT_CHARS)
                except ValidationError as exc:
                    self.stats["malformed"] += 1
                    event = self._unknown(raw, "malformed committed invalidation", exc)
                if event is None:
                    drop = drop or "a committed invalidation names no readable table"
                    continue
                done, failed = self._guarded("(committed, not yet in the log)", event, names)
                applied += done
                drop = drop or failed
            if drop is not None:
                self.drop(drop)
            return applied

    # --- internals (lock held) -----------------------------------------------------------

    def _adopt(self, state: LogState) -> None:
        """Start following at the head; drop first unless nothing can be cached yet."""
        old_epoch = self.stats["epoch"]
        if old_epoch is not None or self.cursor != NOTHING:
            self.drop(
                f"the invalidation log was replaced (epoch {old_epoch!r} -> {state.epoch!r}, "
                f"e.g. Redis restarted): events after {self.cursor!r} may be lost"
            )
        elif self._loaded_unfollowed():
            self.drop("records were loaded before this process first reached the log")
        self.stats["epoch"] = state.epoch
        self.target.cursor = state.head

    def _loaded_unfollowed(self) -> bool:
        """Whether the target may hold records loaded while no cursor was followed (after
        a drop while the log was unreachable, or read before the listener started)."""
        if self.stats["drops"]:
            return True
        status = getattr(self.target, "status", None)
        if not callable(status):
            return False
        return any(table.get("loaded") for table in status().values())

    def _drain(self, source: InvalidationLog) -> int:
        applied = 0
        while True:
            before = self.cursor
            batch = source.read(before, self.batch)
            if batch.epoch != self.stats["epoch"] or batch.gap:
                self._lost(source, batch, before)
                return applied
            if batch.entries or batch.foreign:
                applied += self._apply(batch)
            if len(batch.entries) < self.batch:
                return applied

    def _lost(self, source: InvalidationLog, batch: Batch, before: str) -> None:
        state = source.state()  # read before dropping: events after it are read normally
        if batch.epoch != self.stats["epoch"]:
            self._adopt(state)
        else:
            self.stats["gaps"] += 1
            self.drop(
                f"gap: the invalidation log was trimmed past this process's cursor {before!r}"
            )
            self.target.cursor = state.head
            self.stats["epoch"] = state.epoch

    def _apply(self, batch: Batch) -> int:
        names = set(self.target.names())
        applied = 0
        drop: str | None = None
        for event_id, raw in batch.entries:
            if not is_after(event_id, self.cursor):
                continue
            try:
                event = decode_event(raw, max_keys=MAX_EVENT_CHARS)
            except ValidationError as exc:
                self.stats["malformed"] += 1
                event = self._unknown(raw, f"malformed invalidation {event_id}", exc)
            failed = None
            if event is None:
                failed = f"malformed invalidation {event_id} names no readable table"
            else:
                done, failed = self._guarded(event_id, event, names)
                applied += done
            if failed is not None and drop is None:
                # Before the cursor passes it: a barrier (`wait_for`) that sees the cursor
                # there must find the tables dropped already. Once per batch: a reload after
                # this drop reads every later entry's change (committed before it was logged).
                drop = failed
                self.drop(drop)
            self.target.cursor = event_id
            self.recent.append((event_id, time.time(), batch.published.get(event_id)))
        dropped, drop = drop is not None, None
        for event_id, raw in batch.foreign:
            # An id the log never handed out: following it would put the cursor past every
            # later event. Applied once, as an entry that cannot be trusted; never a cursor.
            if event_id in self._foreign_seen:
                continue
            self._foreign_seen[event_id] = None
            while len(self._foreign_seen) > self._foreign_max:
                del self._foreign_seen[next(iter(self._foreign_seen))]
            self.stats["foreign"] += 1
            self.stats["malformed"] += 1  # one that cannot be applied exactly (metrics)
            what = f"invalidation {event_id[:30]} with an id its log never handed out"
            event = self._unknown(raw, what, None)
            if event is None:
                drop = drop or f"{what} names no readable table"
            else:
                drop = drop or self._guarded(event_id, event, names)[1]
        if drop is not None and not dropped:
            self.drop(drop)
        return applied

    def _guarded(self, event_id: str, event: Event, names: set[str]) -> tuple[int, str | None]:
        """Apply `event`: (1 if applied else 0, the reason to drop everything if it failed)."""
        try:
            return int(self._apply_event(event, names)), None
        except Exception as exc:  # never stop following; never keep what may be stale
            log.exception("could not apply invalidation %s", event_id)
            return 0, f"could not apply invalidation {event_id} ({exc})"

    def _unknown(self, raw: object, what: str, exc: Exception | None) -> Event | None:
        """An entry that cannot be applied exactly: its table whole, or None (it may name
        any table: the caller drops every cached table). Never skipped."""
        table = table_of(raw)
        self._warnings.warning(
            "%s (%s)%s",
            what,
            "every cached table dropped"
            if table is None
            else f"table {table[:100]!r} invalidated whole",
            "" if exc is None else f": {str(exc)[:200]}",
        )
        return None if table is None else Event(table[:1000])

    def _apply_event(self, event: Event, names: set[str]) -> bool:
        if event.table not in names:
            self.stats["ignored"] += 1
            return False
        keys: list | None = None
        if event.keys is not None and len(event.keys) <= self.max_keys:
            keys = []
            for key in event.keys:
                try:
                    keys.append(self.target.coerce_key(event.table, key))
                except CacheworkError:  # not exactly applicable: the whole table instead
                    keys = None
                    break
        # keys None: every record (asked for, over this process's limit, or not coercible)
        self.target.invalidate(event.table, keys)
        self.stats["applied"] += 1
        return True


class ReconnectingLoop:
    """A daemon thread running connect -> iterate until stopped, reconnecting with backoff.

    The shape of kombu's ConsumerMixin: subclasses fill in hooks; reconnecting, backoff,
    unexpected errors and shutdown are handled here, in one tested place.
    """

    name = "cachework-loop"
    # A log that refuses reads (LogError) is, to a reader, one it cannot reach: the same
    # backoff, and the same drop of the cached tables once it lasts.
    recoverable: tuple[type[BaseException], ...] = (LogUnavailable, LogError)
    backoff_start = 0.05
    backoff_max = 5.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # hooks
    def on_connect(self) -> None:
        """(Re)connect; called before the first iteration and after each error."""

    def on_iteration(self) -> None:
        """One unit of work; should block at most a short while (it is not interrupted)."""
        raise NotImplementedError

    def on_connection_error(self, exc: BaseException, delay: float) -> float:
        """A recoverable error; returns how long to wait before reconnecting."""
        return delay

    def on_unexpected_error(self, exc: BaseException) -> None:
        log.exception("%s: unexpected error, restarting the loop", self.name)

    def on_stop(self) -> None:
        """Called once, in the thread, after the loop ends."""

    # the loop
    def run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self.on_connect()
                    while not self._stop.is_set():
                        self.on_iteration()
                        failures = 0
                except self.recoverable as exc:
                    failures += 1
                    delay = min(self.backoff_max, self.backoff_start * 2 ** min(failures - 1, 20))
                    self._stop.wait(self.on_connection_error(exc, delay))
                except Exception as exc:
                    failures += 1
                    self.on_unexpected_error(exc)
                    self._stop.wait(min(self.backoff_max, self.backoff_start * 2**failures))
        finally:
            self.on_stop()

    def start(self) -> ReconnectingLoop:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the loop to end and wait for it; True if the thread is gone."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self.alive

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


class Listener(ReconnectingLoop):
    """Tails `log` for `tracker` in a daemon thread. If the log stays unreachable for
    `stale_after` seconds it drops the cached tables (and again every `stale_after` seconds
    while the outage lasts), since invalidations may be passing it by.

    Idle, it makes one blocking read per `block` seconds (`Tracker.listen`); each connect
    and reconnect starts with the checked read (epoch and gap), and `stop()` breaks off a
    blocked read at once."""

    name = "cachework-invalidation-listener"

    def __init__(
        self,
        tracker: Tracker,
        log: InvalidationLog,
        *,
        stale_after: float = 30.0,
        block: float = LISTEN_BLOCK,
    ) -> None:
        super().__init__()
        self.tracker = tracker
        self.log = log
        self.stale_after = stale_after
        self.block = block
        self._down_since: float | None = None
        self._last_drop: float | None = None
        self._last_ok: float | None = None  # when the log last answered

    def on_connect(self) -> None:
        if self._down_since is not None:
            self.log.close()  # fresh connections after an error
        self.tracker.poll(self.log)
        stats = self.tracker.stats
        stats["connected"] = True
        if self._down_since is not None:
            stats["reconnects"] += 1
            log.info(
                "invalidation listener reconnected after %.1fs",
                time.monotonic() - self._down_since,
            )
        self._down_since = self._last_drop = None
        self._last_ok = time.monotonic()

    def on_iteration(self) -> None:
        self.tracker.listen(self.log, self.block, self._stop)
        self._last_ok = time.monotonic()

    def on_connection_error(self, exc: BaseException, delay: float) -> float:
        now = time.monotonic()
        self.tracker.stats["connected"] = False
        if self.stopping:  # stop() broke the connection to end a blocking read
            return 0.0
        if self._down_since is None:
            # Down since the log last answered: a read that blocks for `block` seconds
            # notices a lost server up to its read timeout later.
            self._down_since = min(now, self._last_ok) if self._last_ok is not None else now
            log.warning("invalidation listener lost the log, reconnecting: %s", exc)
        since = self._last_drop if self._last_drop is not None else self._down_since
        if now - since >= self.stale_after:
            self.tracker.drop(f"invalidation log unreachable for {now - self._down_since:.1f}s")
            self._last_drop = since = now
        return max(0.01, min(delay, since + self.stale_after - now))

    def on_unexpected_error(self, exc: BaseException) -> None:
        """A bug or an odd answer: log it and count it as an outage (drop after the bound),
        since events are not being applied meanwhile."""
        if self.stopping:
            return
        super().on_unexpected_error(exc)
        self.on_connection_error(exc, 0.0)

    def stop(self, timeout: float = 5.0) -> bool:
        """End the loop promptly: a read blocked on the log is broken off by closing the
        log's connections (`interrupt`), again until the thread is gone or `timeout`."""
        self._stop.set()
        interrupt = getattr(self.log, "interrupt", None)
        deadline = time.monotonic() + timeout
        if interrupt is not None and self._thread is not threading.current_thread():
            while self.alive and time.monotonic() < deadline:
                try:
                    interrupt()
                except Exception:  # a broken connection must not mask the shutdown
                    log.debug("interrupting the invalidation listener failed", exc_info=True)
                if self._thread is not None:
                    self._thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
        return super().stop(max(0.0, deadline - time.monotonic()))

    def on_stop(self) -> None:
        self.tracker.stats["connected"] = False
        try:
            self.log.close()
        except Exception:  # closing a broken connection must not mask the shutdown
            log.debug("closing the invalidation log failed", exc_info=True)
