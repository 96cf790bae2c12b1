"""A cached table: records of a slow source served from in-process storage through indexes.

`CachedTable(indexes, source, storage)` keeps plain immutable records (see `cachework.records`)
of any select, serves reads of covered, valid records from memory, sends uncovered reads to
the source, and refreshes exactly the records it is told are invalid, lazily, on the next
read that needs them. Synchronous and thread-safe.

How it stays correct and fast:

- Point reads by primary key (`get`) take no lock: `_valid` maps primary key -> record for
  every stored record that no pending invalidation touches. An invalidation removes the
  records it names from `_valid` (or swaps in an empty dict when the primary key index is
  dirty) before it returns, so a read that starts after it misses `_valid` and takes the
  slow path, which refreshes first.
- Everything else (secondary and range reads, misses) runs under `_lock`, a short in-memory
  lock; storage is only changed under it, in one critical section per refresh or adjust,
  so such a read sees the whole state before or the whole state after.
- Database reads (load, refresh, adjust) hold `_refresh_lock` (one at a time: readers that
  need the same refresh wait for it and then share its result), never `_lock`, so
  invalidations and valid reads go on while the database is read.
- Every invalidation gets a sequence number. A refresh takes the pending invalidations it
  saw when it started and removes only those when it finishes: one that arrived while the
  database was being read stays pending, and the records it names stay out of `_valid`,
  so the next read refreshes them again (tablecache loses it: it clears everything).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachework.cache.tables.indexes import (
    Index,
    Spec,
    check_indexes,
    check_spec,
    difference,
    make_spec,
    overlaps,
    within,
)
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.storage import LocalStorage
from cachework.errors import TransientError, ValidationError
from cachework.records import Record, coerce

log = logging.getLogger(__name__)
READ_ATTEMPTS = 3  # refreshes a read waits for before it reads the source directly


@dataclass(frozen=True)
class Invalidation:
    """One `invalidate_records` call, kept until a refresh that started after it ends."""

    seq: int
    old: tuple[Spec, ...]
    new: tuple[Spec, ...]
    force: bool
    named: frozenset[str] = field(init=False)
    by_index: dict[str, tuple[Spec, ...]] = field(init=False)

    def __post_init__(self) -> None:
        # As in the reference, an index counts as named only when both lists name it: a
        # spec of the old values alone cannot tell where a moved record is now.
        named = frozenset(s.index for s in self.old) & frozenset(s.index for s in self.new)
        by_index: dict[str, list[Spec]] = {}
        for spec in self.old + self.new:
            if spec.index in named:
                by_index.setdefault(spec.index, []).append(spec)
        object.__setattr__(self, "named", named)
        object.__setattr__(self, "by_index", {k: tuple(v) for k, v in by_index.items()})

    def touches(self, spec: Spec) -> bool:
        """Whether a read of `spec` must refresh first (an index not named is dirty)."""
        specs = self.by_index.get(spec.index)
        return specs is None or any(overlaps(spec, s) for s in specs)


def _count(counter: itertools.count) -> int:
    """How many times `next(counter)` ran (an exact, lock-free counter under the GIL)."""
    return int(repr(counter)[6:-1])


class CachedTable:
    """Records of `source` served through `indexes` from `storage` (in-process by default).

    `autoload`: True (default) loads every record lazily on the first read; a Spec loads
    that subset; False makes reads wait for an explicit `load()`. After `clear()` the next
    read reloads what was covered before.
    """

    def __init__(
        self,
        indexes: Sequence[Index],
        source: SelectSource,
        storage: LocalStorage | None = None,
        *,
        name: str = "cached_table",
        autoload: Spec | bool = True,
        read_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.primary_key, self.indexes = check_indexes(indexes)
        for index in self.indexes.values():
            source.column(index.column)  # fail now if the source lacks an indexed column
        self.source = source
        self.storage = storage if storage is not None else LocalStorage()
        self.storage.bind(list(self.indexes.values()))
        self.key_type = source.python_type(self.primary_key.column)
        self.read_timeout = read_timeout
        if autoload is True:
            self._autoload: Spec | None = Spec.all(self.primary_key.name)
        elif isinstance(autoload, Spec):
            check_spec(autoload, self.indexes)
            self._autoload = autoload
        else:
            self._autoload = None
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._loaded_event = threading.Event()
        self._valid: dict[Hashable, Record] = {}
        self._valid_complete = False
        self._coverage: Spec | None = None
        self._loading = False
        self._pending: list[Invalidation] = []
        self._seq = 0
        self._epoch = 0
        self._fast_hits = itertools.count()
        # Every read is one hit (records found in memory) or one miss (nothing found in
        # memory: the key is absent, which memory proves, or the source was asked); the
        # misses the source answered are also `_source_reads` (what a miss costs).
        self._hits = self._misses = self._source_reads = self._refreshes = 0
        self._loads = self._adjusts = self._drops = 0
        self._last_refresh: float | None = None
        self._last_refresh_seconds: float | None = None

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: Hashable) -> Record | None:
        """The record with primary key `key`, or None: the lock-free hot path."""
        record = self._valid.get(key)
        if record is not None:
            next(self._fast_hits)
            return record
        records = self._read(Spec(self.primary_key.name, values=(key,)))
        return records[0] if records else None

    def get_records(self, *args: Any, **kwargs: Any) -> list[Record]:
        """The records a spec names: `Spec`, `index, *values`, `index, ge=, lt=` or
        `index, everything=True`. From storage when covered and valid, else the source."""
        spec = make_spec(args, dict(kwargs))
        check_spec(spec, self.indexes)
        return self._read(spec)

    def get_first_record(self, *args: Any, **kwargs: Any) -> Record:
        """The first record `get_records` would return; KeyError when there is none."""
        records = self.get_records(*args, **kwargs)
        if not records:
            raise KeyError(f"no record in {self.name!r} for {make_spec(args, dict(kwargs))!r}")
        return records[0]

    def coerce_key(self, key: Any) -> Any:
        """`key` converted to the primary key's type; ValidationError naming it otherwise."""
        return coerce(key, self.key_type, f"{self.name} {self.primary_key.column}")

    # --- reads without I/O (for callers that must not wait: `cachework.cache.aio`) ----------------

    def cached(self, key: Hashable) -> Record | None:
        """`get`'s hot path alone: the valid stored record with primary key `key`, or None
        when memory cannot say (not stored, invalid, not loaded). No I/O, no lock."""
        record = self._valid.get(key)
        if record is not None:
            next(self._fast_hits)
        return record

    def read_cached(self, spec: Spec) -> list[Record] | None:
        """What a read of `spec` returns when memory can answer it without I/O; None when it
        needs the database: not loaded, a pending invalidation touches it, or not covered.
        Takes only the short in-memory lock."""
        if self._coverage is None:
            return None
        with self._lock:
            if self._touching(spec):
                return None
            records, rest = self._from_storage(spec)
            if rest is not None:
                return None
            self._count_read(records)
            return records

    def needs_refresh(self, spec: Spec) -> bool:
        """Whether a read of `spec` waits for a load or refresh (`prepare`) first."""
        if self._coverage is None:
            return True
        with self._lock:
            return self._touching(spec)

    def prepare(self) -> None:
        """Load (or wait for the load) and refresh every pending invalidation: what a read
        that `needs_refresh` would do first. Blocking; one at a time (the refresh lock)."""
        self._ensure_loaded()
        self.refresh_invalid()

    def _read(self, spec: Spec) -> list[Record]:
        self._ensure_loaded()
        records: list[Record] = []
        rest: Spec | None = spec
        for _attempt in range(READ_ATTEMPTS):
            with self._lock:
                if not self._touching(spec):
                    records, rest = self._from_storage(spec)
                    if rest is None:
                        self._count_read(records)
                    break
            self._refresh_for(spec)
        if rest is not None:
            # Uncovered, or invalidations keep arriving: the source is always right. A range
            # read comes back in the same order as from storage (by value, then key).
            order = (self.indexes[rest.index].column, self.primary_key.column)
            records = records + self._fetch([rest], order_by=order if rest.is_range else ())
            with self._lock:
                self._misses += 1
                self._source_reads += 1
        return records

    def _count_read(self, records: list[Record]) -> None:
        """A read memory answered (under _lock): a hit when it found records, else a miss
        (a lookup of an absent key is a miss even though no source was asked)."""
        if records:
            self._hits += 1
        else:
            self._misses += 1

    def _touching(self, spec: Spec) -> bool:
        return any(inv.force and inv.touches(spec) for inv in self._pending)

    def _from_storage(self, spec: Spec) -> tuple[list[Record], Spec | None]:
        """Stored records for `spec` and the part (if any) the source must supply."""
        coverage = self._coverage
        index = self.indexes[spec.index]
        if coverage is None:
            return [], spec
        if within(spec, coverage):
            return self.storage.matching(spec, index), None
        if index.unique and spec.values is not None:
            # A stored, valid record found by a unique key is the answer even when the
            # key is outside the covered set; only keys not found go to the source.
            found: list[Record] = []
            missing = []
            for value in spec.values:
                hit = self.storage.matching(Spec(spec.index, values=(value,)), index)
                if hit:
                    found.extend(hit)
                else:
                    missing.append(value)
            return found, (Spec(spec.index, values=tuple(missing)) if missing else None)
        return [], spec

    def _fetch(
        self, specs: Iterable[Spec], coverage: Spec | None = None, order_by: Sequence[str] = ()
    ) -> list[Record]:
        pairs = [(s, self.indexes[s.index].column) for s in specs]
        bound = None if coverage is None else (coverage, self.indexes[coverage.index].column)
        return self.source.fetch(pairs, within=bound, order_by=order_by)

    # --- loading and adjusting -------------------------------------------------------------

    def load(self, *args: Any, **kwargs: Any) -> int:
        """Load the records a spec names (default: all) into empty storage; returns the count.

        ValidationError when already loaded (use `adjust`)."""
        spec = make_spec(args, dict(kwargs)) if args else Spec.all(self.primary_key.name)
        check_spec(spec, self.indexes)
        with self._refresh_lock:
            if self._coverage is not None:
                raise ValidationError(f"cached table {self.name!r} is already loaded; use adjust()")
            return self._load_locked(spec)

    def loaded(self, timeout: float | None = None) -> bool:
        """Wait until the table is loaded (a readiness probe); False on timeout."""
        return self._loaded_event.wait(timeout)

    def _ensure_loaded(self) -> None:
        if self._coverage is not None:
            return
        if self._autoload is None:
            if not self._loaded_event.wait(self.read_timeout):
                raise TransientError(
                    f"cached table {self.name!r} was not loaded within {self.read_timeout}s"
                )
            return
        with self._refresh_lock:
            if self._coverage is None and self._autoload is not None:
                self._load_locked(self._autoload)

    def _load_locked(self, spec: Spec) -> int:
        started = time.perf_counter()
        with self._lock:
            self._loading = True
            seq, epoch = self._seq, self._epoch
        try:
            rows = self._fetch([spec])
        except BaseException:
            with self._lock:
                self._loading = False
            raise
        with self._lock:
            # Invalidations are kept until this critical section: none is lost.
            self._loading = False
            if epoch != self._epoch:
                return 0  # cleared while reading: the next read loads again
            self.storage.clear()
            for row in rows:
                self.storage.put(row)
            # Invalidations made before the read started are reflected in the rows.
            self._pending = [inv for inv in self._pending if inv.seq > seq]
            self._coverage = self._autoload = spec
            self._rebuild_valid()
            self._loads += 1
            self._mark_refreshed(started)
            self._loaded_event.set()
        log.debug("cached table %s loaded %d records for %r", self.name, len(rows), spec)
        return len(rows)

    def adjust(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        """Change the covered set to the spec given: load what is new, expire what falls out.

        Invalid records are refreshed first. The new records are read from the source while
        readers still see the old state; then expiry and loading are applied in one critical
        section, so no read sees a mix of old and new coverage."""
        spec = make_spec(args, dict(kwargs))
        check_spec(spec, self.indexes)
        with self._refresh_lock:
            if self._coverage is None:
                return {"expired": 0, "loaded": self._load_locked(spec)}
            self._refresh_locked()
            with self._lock:
                old, epoch = self._coverage, self._epoch
            if old is None:
                return {"expired": 0, "loaded": self._load_locked(spec)}
            to_load = difference(spec, old)
            if to_load is None:
                to_load = [spec]  # not expressible as a difference: read the whole new set
            rows = self._fetch(to_load) if to_load else []
            with self._lock:
                if epoch != self._epoch:
                    return {"expired": 0, "loaded": 0}
                expired = self._expire(old, spec)
                for row in rows:
                    self._put(row)
                self._coverage = self._autoload = spec
                self._adjusts += 1
        return {"expired": expired, "loaded": len(rows)}

    def _expire(self, old: Spec, new: Spec) -> int:
        to_expire = difference(old, new)
        if to_expire is None:
            index = self.indexes[new.index]
            pks = [
                pk
                for pk, record in self.storage.records.items()
                if not new.matches(record.get(index.column))
            ]
        else:
            pks = [pk for s in to_expire for pk in self.storage.pks(s, self.indexes[s.index])]
        for pk in pks:
            self.storage.delete(pk)
            self._valid.pop(pk, None)
        return len(pks)

    def _put(self, record: Record) -> None:
        """Store `record`; it is valid unless a pending invalidation names it (under _lock)."""
        self.storage.put(record)
        pk = record[self.primary_key.column]
        if self._valid_complete and not self._record_invalid(record):
            self._valid[pk] = record
        else:
            self._valid.pop(pk, None)

    def insert_records(
        self, records: Iterable[Record], token: tuple[int, int] | None = None
    ) -> int:
        """Add records read by the caller (e.g. a find-or-create hook) to storage.

        `token` is `version()` taken before the caller read them: when any invalidation or
        clear happened since, nothing is stored (the records may be stale). Records outside
        the covered set are not stored. Returns how many were stored."""
        stored = 0
        with self._lock:
            coverage = self._coverage
            if coverage is None or (token is not None and token != (self._epoch, self._seq)):
                return 0
            column = self.indexes[coverage.index].column
            for record in records:
                if coverage.everything or coverage.matches(record.get(column)):
                    self._put(record)
                    stored += 1
        return stored

    def version(self) -> tuple[int, int]:
        """A token that changes with every invalidation and clear (see `insert_records`)."""
        with self._lock:
            return (self._epoch, self._seq)

    def clear(self) -> None:
        """Drop every record; the next read reloads what was covered. No I/O, no waiting."""
        with self._lock:
            self._epoch += 1
            if self._coverage is not None:
                self._autoload = self._coverage
            self._coverage = None
            self._valid = {}
            self._valid_complete = False
            self.storage.clear()
            self._pending = []
            self._loaded_event.clear()
            self._drops += 1

    # --- invalidation and refresh ----------------------------------------------------------

    def invalidate_records(
        self,
        old_specs: Sequence[Spec],
        new_specs: Sequence[Spec] | None = None,
        *,
        force_refresh_on_next_read: bool = True,
    ) -> None:
        """Mark the records the specs name invalid; no I/O.

        `old_specs` name them by their old values, `new_specs` (default: the same) by their
        new ones, each index at most once per list; a refresh deletes what `old_specs[0]`
        names and loads what `new_specs[0]` names. An index not named in both lists becomes
        dirty: every read through it refreshes first. Reads that start after this returns
        never see the old records (unless `force_refresh_on_next_read=False`: then they are
        served until `refresh_invalid()`). A table not loaded (nor loading) ignores it."""
        old = tuple(old_specs)
        new = tuple(new_specs) if new_specs is not None else old
        for label, specs in (("old_specs", old), ("new_specs", new)):
            if not specs:
                raise ValidationError(f"{label} is empty: name the records to invalidate")
            names = [s.index for s in specs]
            for spec in specs:
                if not isinstance(spec, Spec):
                    raise ValidationError(f"{label} has {spec!r}, which is not a Spec")
                check_spec(spec, self.indexes)
            if len(set(names)) != len(names):
                raise ValidationError(f"{label} names an index twice: {names}")
        with self._lock:
            if self._coverage is None and not self._loading:
                return  # nothing cached: the next load reads current rows
            self._seq += 1
            inv = Invalidation(self._seq, old, new, force_refresh_on_next_read)
            self._pending.append(inv)
            if not inv.force:
                return
            if self.primary_key.name not in inv.named or any(
                s.everything for s in inv.by_index[self.primary_key.name]
            ):
                self._valid = {}
                self._valid_complete = False
                return
            valid = self._valid
            for spec in old + new:
                for pk in self.storage.pks(spec, self.indexes[spec.index]):
                    valid.pop(pk, None)

    def invalidate_keys(self, keys: Iterable[Any]) -> None:
        """Invalidate the records with these primary keys (coerced); other indexes go dirty."""
        values = tuple(self.coerce_key(k) for k in keys)
        if values:
            spec = Spec.of(self.primary_key.name, *values)
            self.invalidate_records([spec], [spec])

    def invalidate_all(self) -> None:
        """Invalidate every record: the next read reloads the covered set."""
        specs = [Spec.all(name) for name in self.indexes]
        self.invalidate_records(specs, specs)

    def refresh_invalid(self) -> int:
        """Refresh every record marked invalid now; returns how many invalidations it applied."""
        with self._refresh_lock:
            return self._refresh_locked()

    def _refresh_for(self, spec: Spec) -> None:
        """Refresh for a read of `spec`: concurrent readers share one refresh (stampede)."""
        with self._refresh_lock:
            with self._lock:
                needed = self._touching(spec)
            if needed:
                self._refresh_locked()

    def _refresh_locked(self) -> int:
        started = time.perf_counter()
        with self._lock:
            coverage = self._coverage
            if not self._pending or coverage is None:
                return 0
            batch = list(self._pending)
            seq, epoch = self._seq, self._epoch
        rows = self._fetch(_merge([inv.new[0] for inv in batch]), coverage)
        with self._lock:
            if epoch != self._epoch:
                return 0
            for inv in batch:
                for spec in (inv.old[0], inv.new[0]):
                    for pk in list(self.storage.pks(spec, self.indexes[spec.index])):
                        self.storage.delete(pk)
                        self._valid.pop(pk, None)
            for row in rows:
                self.storage.put(row)
            # Only what this refresh saw is done; later invalidations stay pending.
            self._pending = [inv for inv in self._pending if inv.seq > seq]
            if self._valid_complete:
                candidates = {row[self.primary_key.column] for row in rows}
                for inv in batch:
                    for spec in inv.old + inv.new:
                        candidates.update(self.storage.pks(spec, self.indexes[spec.index]))
                for pk in candidates:
                    record = self.storage.get(pk)
                    if record is not None and not self._record_invalid(record):
                        self._valid[pk] = record
            else:
                self._rebuild_valid()
            self._refreshes += 1
            self._mark_refreshed(started)
        log.debug("cached table %s refreshed %d invalidation(s)", self.name, len(batch))
        return len(batch)

    def _record_invalid(self, record: Record) -> bool:
        """Whether a pending forced invalidation names `record` (under _lock)."""
        for inv in self._pending:
            if not inv.force:
                continue
            if self.primary_key.name not in inv.named:
                return True
            for name, specs in inv.by_index.items():
                value = record.get(self.indexes[name].column)
                if any(s.matches(value) for s in specs):
                    return True
        return False

    def _rebuild_valid(self) -> None:
        forced = [inv for inv in self._pending if inv.force]
        if any(self.primary_key.name not in inv.named for inv in forced):
            self._valid = {}
            self._valid_complete = False
            return
        valid = dict(self.storage.records)
        for inv in forced:
            for spec in inv.old + inv.new:
                for pk in self.storage.pks(spec, self.indexes[spec.index]):
                    valid.pop(pk, None)
        self._valid = valid
        self._valid_complete = True

    def _mark_refreshed(self, started: float) -> None:
        self._last_refresh = time.time()
        self._last_refresh_seconds = time.perf_counter() - started

    # --- statistics ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for `cachework.cache_status` (JSON-safe)."""
        with self._lock:
            loaded = self._coverage is not None
            records = len(self.storage) if loaded else 0
            forced = [inv for inv in self._pending if inv.force]
            dirty = sorted(
                {name for inv in forced for name in self.indexes if name not in inv.named}
            )
            return {
                "loaded": loaded,
                "records": records,
                "invalid": records - len(self._valid) if loaded else 0,
                "hits": self._hits + _count(self._fast_hits),
                "misses": self._misses,
                "source_reads": self._source_reads,
                "refreshes": self._refreshes,
                "loads": self._loads,
                "adjusts": self._adjusts,
                "drops": self._drops,
                "pending": len(self._pending),
                "dirty": dirty,
                "coverage": None if self._coverage is None else repr(self._coverage),
                "last_refresh": self._last_refresh,
                "last_refresh_seconds": self._last_refresh_seconds,
            }


def _merge(specs: Iterable[Spec]) -> list[Spec]:
    """Value specs on the same index merged into one (one IN list, one query)."""
    merged: dict[str, list] = {}
    out: list[Spec] = []
    for spec in specs:
        if spec.values is not None:
            merged.setdefault(spec.index, []).extend(spec.values)
        elif spec.everything:
            return [spec]
        else:
            out.append(spec)
    out.extend(Spec.of(index, *values) for index, values in merged.items())
    return out
