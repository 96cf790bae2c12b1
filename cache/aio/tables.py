"""Awaitable reads of a cached table, whose refresh never blocks the event loop.

`table(runtime, "categories")` is the async view of a declared cached table (a
`CachedTable` or `FullTableCache`); the rules stay the table's own. A read that memory
can answer (the record is stored, valid and covered) returns at once, on the loop, with no
thread hop. A read that must wait for a load or a refresh awaits it in a thread (the
runtime's pool, see `cachework.cache.aio.threads`), and concurrent readers of one table share that
one refresh (the table's refresh lock already makes threads share it; here the loop's
readers wait on one future instead of taking a thread each). A read the source must
answer (a key outside the covered set, invalidations that keep arriving) is the table's
own blocking read, in a thread.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Any

from cachework.cache.aio.threads import off_loop, pool_of
from cachework.cache.tables.full_table import CACHE_KEY, FullTableCache, LookupHook
from cachework.cache.tables.indexes import Spec, check_spec, make_spec
from cachework.cache.tables.table import READ_ATTEMPTS, CachedTable
from cachework.records import Record

_views: weakref.WeakKeyDictionary[Any, AsyncTable] = weakref.WeakKeyDictionary()


def table(source: Any, name: str | None = None) -> AsyncTable:
    """The async view of a cached table: `table(runtime, name)` (its threads are the
    runtime's pool), `table(registry, name)` or `table(cached_table)` (the loop's default
    executor). One view per table, so every reader shares its refreshes."""
    threads: Callable[[], Executor | None] = _default
    if name is not None:
        if hasattr(type(source), "aio_threads"):  # a runtime
            runtime = weakref.ref(source)  # a view must not keep its runtime alive
            threads = lambda: pool_of(runtime())  # noqa: E731 - the pool of the moment
        source = getattr(source, "registry", source).table(name)
    view = _views.get(source)
    if view is None:
        view = _views.setdefault(source, AsyncTable(source, threads))
    return view


def _default() -> None:
    return None


class AsyncTable:
    """Awaitable reads of `table` (a `CachedTable` or `FullTableCache`); see the module."""

    def __init__(
        self, table: CachedTable | FullTableCache, threads: Callable[[], Executor | None] = _default
    ) -> None:
        self.table = table
        self._threads = threads  # the pool to use now (a runtime renews its own)
        self._cached: CachedTable = table.table if isinstance(table, FullTableCache) else table
        self._refreshing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future]
        self._refreshing = weakref.WeakKeyDictionary()

    @property
    def name(self) -> str:
        return self._cached.name

    async def get(self, key: Hashable) -> Record | None:
        """The record with primary key `key`, or None."""
        table = self._cached
        record = table._valid.get(key)  # `CachedTable.cached` inlined: the hot path
        if record is not None:
            next(table._fast_hits)
            return record
        records = await self._read(Spec(self._cached.primary_key.name, values=(key,)))
        return records[0] if records else None

    by_id = get

    def cached(self, key: Hashable) -> Record | None:
        """Not awaited, for hot loops: the valid stored record with primary key `key`, or
        None when memory cannot say (then `await get(key)`). No I/O, no lock."""
        return self._cached.cached(key)

    async def get_records(self, *args: Any, **kwargs: Any) -> list[Record]:
        """The records a spec names, as `CachedTable.get_records` takes it."""
        spec = make_spec(args, dict(kwargs))
        check_spec(spec, self._cached.indexes)
        return await self._read(spec)

    async def get_first_record(self, *args: Any, **kwargs: Any) -> Record:
        """The first record `get_records` returns; KeyError when there is none."""
        records = await self.get_records(*args, **kwargs)
        if not records:
            raise KeyError(f"no record in {self.name!r} for {make_spec(args, dict(kwargs))!r}")
        return records[0]

    async def by_cache_key(
        self, key: Hashable, lookup_hook: LookupHook | None = None
    ) -> tuple[Record | None, bool]:
        """`FullTableCache.by_cache_key`: (record, is_new). A miss with a `lookup_hook`
        (your blocking find-or-create) runs the whole lookup in a thread."""
        if not isinstance(self.table, FullTableCache):
            raise TypeError(f"cached table {self.name!r} is not a FullTableCache")
        records = await self._read(Spec(CACHE_KEY, values=(key,)))
        if records or lookup_hook is None:
            return (records[0] if records else None), False
        return await off_loop(self._threads(), self.table.by_cache_key, key, lookup_hook)

    async def _read(self, spec: Spec) -> list[Record]:
        cached = self._cached
        for _attempt in range(READ_ATTEMPTS):
            records = cached.read_cached(spec)
            if records is not None:
                return records
            if not cached.needs_refresh(spec):
                break  # loaded and valid but not covered: the source answers
            await self._prepared()
        return await off_loop(self._threads(), cached.get_records, spec)

    async def _prepared(self) -> None:
        """Wait for the table's load and refresh; one per table and loop at a time."""
        loop = asyncio.get_running_loop()
        future = self._refreshing.get(loop)
        if future is None or future.done():
            future = asyncio.ensure_future(off_loop(self._threads(), self._cached.prepare))
            future.add_done_callback(_retrieve)
            self._refreshing[loop] = future
        await asyncio.shield(future)  # a cancelled reader leaves the refresh to the others


def _retrieve(future: asyncio.Future) -> None:
    """Its readers get the error; if all of them were cancelled, nobody must see it."""
    if not future.cancelled():
        future.exception()
