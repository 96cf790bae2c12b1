"""One runtime per process: everything this process holds, built from `Settings`.

A `Runtime` owns the process's database (engine and sessions), Redis client, rebuild lock
backend, cache plugins, project source, cached-table registry, invalidation logs, tracker,
listener thread and outbox relay. Each is made on first use, so building a runtime does
nothing (no connection, no folder, no thread). It renews itself in a forked child the way
kombu's transports do: an after-fork hook makes the child forget the parent's sockets,
tables and threads (they belong to the parent) and build its own on first use.

The Celery worker keeps one on its app and drives it from Celery's signals; a web app
builds and starts the same runtime with one call and never imports Celery:

    from cachework.worker.runtime import start_runtime
    runtime = start_runtime()            # after any fork; catches up, then listens
    runtime.registry.table("categories").get(3)
    publish("categories", [3], session=session)   # your transaction, through the outbox
    runtime.stop()                       # at shutdown

An asyncio app starts it from its lifespan instead: `async with runtime_lifespan()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import redis
import sqlalchemy as sa

from cachework.cache.invalidation import (
    DatabaseLog,
    InvalidationLog,
    Listener,
    LogError,
    LogUnavailable,
    RedisLog,
    Relay,
    RelayLoop,
    Tracker,
    outbox,
)
from cachework.cache.invalidation.events import KeyCoercer
from cachework.cache.invalidation.node_lock import NodeLock
from cachework.cache.invalidation.outbox import PENDING_MAX, pending_rows
from cachework.cache.items import plugins as cache_plugins
from cachework.cache.items import reads
from cachework.cache.items.locks import LockBackend, lock_backend
from cachework.cache.items.projects import ProjectSource
from cachework.cache.items.reads import ItemReads
from cachework.cache.tables.registry import Registry, load_declarations
from cachework.database import Database
from cachework.records import coerce
from cachework.redis_client import client_from_url
from cachework.redis_policy import refuse_evicting
from cachework.settings import Settings, load_settings, mask_url
from cachework.worker.sampler import Sampler

if TYPE_CHECKING:
    from cachework.importers.bootstrap import Models

log = logging.getLogger(__name__)
AIO_THREADS = 8  # an asyncio app's concurrent loads, refreshes and source reads
_live: weakref.WeakSet[Runtime] = weakref.WeakSet()


class Runtime:
    """This process's resources for `settings`, made on first use, renewed after fork."""

    def __init__(self, settings: Settings, *, database: Database | None = None) -> None:
        self.settings = settings
        self._database = database
        self._lock = threading.RLock()
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """Forget everything made in this process except the settings (and a database
        that was handed in, whose pool `after_fork` discards)."""
        self._redis: redis.Redis | None = None
        self._locks: LockBackend | None = None
        self._plugins: dict[str, cache_plugins.CachePlugin] | None = None
        self._projects: ProjectSource | None = None
        self._item_reads: ItemReads | None = None
        self._registry: Registry | None = None
        self._tracker: Tracker | None = None
        self._tracker_made = False
        self._listener: Listener | None = None
        self._relay: RelayLoop | None = None
        self._sampler: Sampler | None = None
        self._outbox_seen: set[int] = set()  # pending outbox rows a catch-up applied
        self._sweeper: outbox.Sweeper | None = None
        self._aio_threads: ThreadPoolExecutor | None = None
        self._log: InvalidationLog | None = None

    # --- resources --------------------------------------------------------------------

    @property
    def database(self) -> Database:
        with self._lock:
            if self._database is None:
                self._database = Database(self.settings.database_url, self.settings.database_pooler)
            return self._database

    @property
    def redis(self) -> redis.Redis | None:
        """The Redis client (locks, invalidation stream), or None when Redis is off."""
        url = self.settings.redis_url
        if url is None:
            return None
        with self._lock:
            if self._redis is None:
                self._redis = client_from_url(
                    url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
                )
            return self._redis

    @property
    def locks(self) -> LockBackend:
        """Rebuild locks: in Redis when configured, else in the database."""
        with self._lock:
            if self._locks is None:
                self._locks = lock_backend(
                    self.database.engine, self.redis, self.settings.cache_lock_ttl_ms
                )
            return self._locks

    @property
    def models(self) -> Models:
        """The app's models, Continuum set up (idempotent per process)."""
        from cachework.importers.bootstrap import bootstrap

        return bootstrap(self.settings.models)

    @property
    def plugins(self) -> dict[str, cache_plugins.CachePlugin]:
        """Cache plugins by app name (entry points and the model modules), found once."""
        with self._lock:
            if self._plugins is None:
                self._plugins = cache_plugins.discover(self.models.modules)
            return self._plugins

    @property
    def projects(self) -> ProjectSource:
        """The app's projects (table, key column, key type) from the settings."""
        with self._lock:
            if self._projects is None:
                self._projects = ProjectSource.from_settings(
                    self.settings, metadata=self.models.metadatas
                )
            return self._projects

    @property
    def item_reads(self) -> ItemReads:
        """What the plugins' items read (`depends_on`), checked against the models once:
        a ConfigError names a declaration that does not fit them. Empty (nothing tracked,
        nothing followed) with CACHEWORK_REBUILD_ON_CHANGE=off."""
        with self._lock:
            if self._item_reads is None:
                plugins = self.plugins
                if self.settings.rebuild_on_change and reads.declares(plugins):
                    found = reads.check(plugins, self.models.metadatas, self.projects)
                else:  # nothing to check, and the projects table may not even be set
                    found = ItemReads(ProjectSource.off())
                self._item_reads = found
            return self._item_reads

    @property
    def registry(self) -> Registry:
        """This process's declared cached tables (each built on first read)."""
        with self._lock:
            if self._registry is None:
                self.models  # noqa: B018 - the table factories may import model modules
                self._registry = Registry(
                    load_declarations(self.settings.cached_tables), lambda: self.database.engine
                )
            return self._registry

    @property
    def sampler(self) -> Sampler:
        """Copies this runtime's table and listener statistics into the metrics (a thread
        only when its owner starts one: a worker's lifecycle, `start(sample=True)`)."""
        with self._lock:
            if self._sampler is None:
                self._sampler = Sampler(self)
            return self._sampler

    @property
    def aio_threads(self) -> ThreadPoolExecutor:
        """Threads for an asyncio app's blocking cachework work (`cachework.cache.aio`: a cached
        table's load or refresh, a barrier's wait), never the loop's default executor,
        which the app's own `to_thread` calls share. Ended by `stop()`."""
        with self._lock:
            if self._aio_threads is None:
                self._aio_threads = ThreadPoolExecutor(
                    AIO_THREADS, thread_name_prefix="cachework-aio"
                )
            return self._aio_threads

    # --- invalidation -----------------------------------------------------------------

    def invalidation_log(self, *, for_listener: bool = False) -> InvalidationLog:
        """The Redis Stream when Redis is configured, else the database's log table.

        `for_listener`: a Redis connection of the listener's own that never retries
        silently (it blocks on reads). Otherwise one object per runtime: the outbox
        sweeper sends a burst of commits' rows together only when they name one log."""
        s = self.settings
        if for_listener:
            if s.redis_url:
                return RedisLog.for_listener(s.redis_url, maxlen=s.stream_maxlen)
            return DatabaseLog(self.database.engine, maxlen=s.stream_maxlen)
        with self._lock:
            if self._log is None:
                self._log = (
                    RedisLog(self.redis, maxlen=s.stream_maxlen)
                    if s.redis_url
                    else DatabaseLog(self.database.engine, maxlen=s.stream_maxlen)
                )
            return self._log

    def known_tables(self) -> dict[str, KeyCoercer | None]:
        """Table name -> key coercer for every table an event may name: the app's model
        tables and this process's declared cached tables."""
        tables: dict[str, KeyCoercer | None] = {}
        for metadata in self.models.metadatas:
            for name, table in metadata.tables.items():
                tables[name] = _key_coercer(table)
        registry = self.registry
        for name in registry.names():
            tables[name] = functools.partial(registry.coerce_key, name)
        return tables

    @property
    def tracker(self) -> Tracker | None:
        """The tracker of this process's position in the log, or None when the process
        declares no cached tables (then there is nothing to invalidate here)."""
        with self._lock:
            if not self._tracker_made:
                registry = self.registry
                if registry.names():
                    self._tracker = Tracker(
                        registry,
                        self.invalidation_log(),
                        max_keys=self.settings.invalidation_max_keys,
                    )
                self._tracker_made = True
            return self._tracker

    def catch_up(self) -> int:
        """Apply what was published or committed before now, so what follows never reads
        a record invalidated earlier: first the outbox rows still waiting for the relay
        (one indexed query, empty as a rule), then the log (one head read when up to
        date). In that order, since a row leaves the outbox only once it is in the log.
        Never raises: when either cannot be read, the cached tables are dropped instead."""
        try:
            tracker = self.tracker
        except Exception:
            log.exception("invalidation catch-up could not start; dropping cached tables")
            self.registry.drop_all("invalidation catch-up could not start")
            return 0
        if tracker is None:
            return 0
        applied = self._catch_up_outbox(tracker)
        return applied + tracker.catch_up()

    def _catch_up_outbox(self, tracker: Tracker) -> int:
        """Committed outbox rows not relayed yet: applied here once each (the log brings
        them again later); more than `PENDING_MAX` (a relay far behind): drop instead.

        A database that cannot be reached takes no commits meanwhile: the tables are kept
        (served from memory through the outage) when the last read found the outbox
        empty, and dropped when rows were waiting then."""
        try:
            rows = pending_rows(self.database.engine)
        except (LogUnavailable, LogError) as exc:
            if self._outbox_seen:
                tracker.drop(f"the outbox cannot be read at task start ({exc})")
            return 0
        if len(rows) > PENDING_MAX:
            tracker.drop(f"over {PENDING_MAX} committed invalidations wait in the outbox")
            self._outbox_seen = {row_id for row_id, _data in rows}
            return 0
        seen, self._outbox_seen = self._outbox_seen, {row_id for row_id, _data in rows}
        fresh = [data for row_id, data in rows if row_id not in seen]
        return tracker.apply_unlogged(fresh) if fresh else 0

    def apply_committed(self, datas: list[str]) -> None:
        """This process committed outbox rows: invalidate them in its own cached tables
        before the commit returns (read-your-writes). Called by `outbox.committed`."""
        tracker = self._tracker
        if tracker is not None:
            tracker.apply_unlogged(datas)

    def wait_for(self, event_id: str, timeout: float = 5.0) -> None:
        """Read barrier: return once this process has applied `event_id`."""
        tracker = self.tracker
        if tracker is not None:
            tracker.wait_for(event_id, timeout)

    # --- lifecycle --------------------------------------------------------------------

    def start(self, *, relay: bool = False, sample: bool = False) -> Runtime:
        """Catch up, then start the listener thread (when this process holds cached
        tables), with `relay` the outbox relay, and with `sample` the sampler's thread
        (its metrics are summed or scraped from another process). Call after any fork;
        idempotent."""
        s = self.settings
        tracker = self.tracker
        with self._lock:
            if tracker is not None and (self._listener is None or not self._listener.alive):
                tracker.catch_up()
                self._listener = Listener(
                    tracker,
                    self.invalidation_log(for_listener=True),
                    stale_after=s.listener_stale_after,
                )
                self._listener.start()
            if relay and self._relay is None:
                relay_pass = Relay(self.database.engine, self.invalidation_log())
                self._relay = RelayLoop(relay_pass, elector=self._relay_lock()).start()
            if sample:
                self.sampler.start()
            if self._sweeper is None:
                self._sweeper = outbox.Sweeper().start()
        outbox.add_sink(self)  # this process's commits invalidate its tables at once
        return self

    def _relay_lock(self) -> NodeLock:
        """The node's outbox relay election for this database and log (no secrets in the
        lock file's name: a hash of the URLs with their passwords masked)."""
        s = self.settings
        return NodeLock.for_relay(mask_url(s.database_url), mask_url(s.redis_url or "db-log"))

    @property
    def sweeper(self) -> outbox.Sweeper | None:
        """Finishes this process's commits' relays off their path (None: not started)."""
        return self._sweeper

    @property
    def listening(self) -> bool:
        listener = self._listener
        return listener is not None and listener.alive

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener, the relay, `aio_threads` and the sampler, which copies a
        last time (the resources stay usable)."""
        outbox.remove_sink(self)
        with self._lock:
            listener, self._listener = self._listener, None
            relay, self._relay = self._relay, None
            sweeper, self._sweeper = self._sweeper, None
            threads, self._aio_threads = self._aio_threads, None
            sampler = self._sampler
        if listener is not None:
            listener.stop(timeout)
        if relay is not None:
            relay.stop(timeout)
        if sweeper is not None:
            sweeper.stop(timeout)
        if sampler is not None:
            sampler.stop(timeout)
        if threads is not None:  # a refresh under way finishes in its thread
            threads.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop, then close the Redis client and the database pool."""
        self.stop()
        with self._lock:
            client, self._redis = self._redis, None
            self._log = None  # it used the client closed here
            database = self._database
        if client is not None:
            client.close()
        if database is not None:
            database.dispose()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's sockets, tables and threads without
        touching them (they are the parent's), so each is made anew on first use."""
        self._lock = threading.RLock()
        if self._database is not None:
            self._database.engine.dispose(close=False)
        self._reset()


def _key_coercer(table: sa.Table) -> KeyCoercer | None:
    """Coerce to the single-column primary key's type (None: composite or unknown)."""
    columns = list(table.primary_key.columns)
    if len(columns) != 1:
        return None
    try:
        kind = columns[0].type.python_type
    except NotImplementedError:
        return None
    return functools.partial(_coerce_to, kind=kind, what=f"{table.name} {columns[0].name}")


def _coerce_to(key: object, *, kind: type, what: str) -> object:
    return coerce(key, kind, what)


def start_runtime(settings: Settings | None = None, *, relay: bool = False) -> Runtime:
    """One call for a web app: a runtime for `settings` (default: the environment),
    caught up and listening. Keep the returned runtime; `stop()` it at shutdown."""
    settings = settings or load_settings()
    refuse_evicting(settings)  # one line when Redis may evict what must not be lost
    return Runtime(settings).start(relay=relay)


@contextlib.asynccontextmanager
async def runtime_lifespan(
    settings: Settings | None = None, *, relay: bool = False
) -> AsyncIterator[Runtime]:
    """`start_runtime` for an asyncio app's lifespan (FastAPI, Starlette): started in a
    thread, so the app serves nothing before it caught up and the loop never waits on its
    I/O; its listener is a thread of its own that never touches the loop. Closed (listener
    stopped, `aio_threads` ended, connections released) at shutdown, also in a thread.

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with runtime_lifespan() as runtime:
                app.state.runtime = runtime
                yield
    """
    runtime = await asyncio.to_thread(start_runtime, settings, relay=relay)
    try:
        yield runtime
    finally:
        await asyncio.to_thread(runtime.close)


def _renew_after_fork() -> None:
    for runtime in list(_live):
        runtime.after_fork()


os.register_at_fork(after_in_child=_renew_after_fork)
