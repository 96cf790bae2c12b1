"""The simple case: a whole table cached by id and by a unique cache key.

`FullTableCache` is what HasFullTableCache did, without its pitfalls: it caches plain
immutable records (never ORM instances shared across sessions), loads lazily on the first
read, and `reset()` makes the next read repopulate. A miss by cache key can go through a
find-or-create hook, whose result is inserted into the cache only when no invalidation
or reset happened while the hook ran (so a stale row is never cached). `attach()` turns a
record into an instance of a caller's Session only when the caller asks, without a query.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from cachework.cache.tables.indexes import PrimaryKey, Unique
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable
from cachework.errors import ValidationError
from cachework.records import Record, record_from

CACHE_KEY = "cache_key"
LookupHook = Callable[[], "tuple[Any, bool] | Any"]


class FullTableCache:
    """Every row of `source` (a Table, mapped class or select), by id and by `key_column`."""

    def __init__(
        self,
        engine: sa.Engine,
        source: Any,
        *,
        key_column: str,
        id_column: str = "id",
        name: str | None = None,
    ) -> None:
        if isinstance(source, type):  # a mapped class: cache its table's columns
            source = sa.inspect(source).local_table
        select = source if isinstance(source, sa.Select) else sa.select(source)
        self.source = SelectSource(engine, select)
        self.name = name or getattr(source, "name", "table")
        self.id_column = id_column
        self.key_column = key_column
        self.table = CachedTable(
            [PrimaryKey(id_column), Unique(key_column, name=CACHE_KEY)],
            self.source,
            name=self.name,
        )

    def by_id(self, id: Hashable) -> Record | None:
        """The record with this id, or None (no query once loaded)."""
        return self.table.get(id)

    get = by_id

    def by_cache_key(
        self, key: Hashable, lookup_hook: LookupHook | None = None
    ) -> tuple[Record | None, bool]:
        """(record, is_new) for cache key `key`.

        On a miss, `lookup_hook()` (if given) finds or creates the row and returns
        `(row, is_new)` or just the row (a mapping, Row or ORM instance; None when there is
        none). The row becomes a record and is inserted into the cache unless an
        invalidation or reset happened meanwhile. A created row should be committed by the
        caller; if that transaction rolls back, call `reset()` or invalidate the id.
        """
        token = self.table.version()
        records = self.table.get_records(CACHE_KEY, key)
        if records:
            return records[0], False
        if lookup_hook is None:
            return None, False
        found = lookup_hook()
        obj, new = found if isinstance(found, tuple) else (found, False)
        if obj is None:
            return None, bool(new)
        record = record_from(obj, self.source.columns)
        if record.get(self.key_column) != key:
            raise ValidationError(
                f"lookup_hook for {self.name} {self.key_column}={key!r} returned a row with "
                f"{self.key_column}={record.get(self.key_column)!r}"
            )
        self.table.insert_records([record], token)
        return record, bool(new)

    def reset(self) -> None:
        """Forget every record; the next read repopulates the whole table."""
        self.table.clear()

    # The registry's uniform table interface.
    def coerce_key(self, key: Any) -> Any:
        return self.table.coerce_key(key)

    def invalidate_keys(self, keys: Iterable[Any]) -> None:
        self.table.invalidate_keys(keys)

    def invalidate_all(self) -> None:
        self.table.invalidate_all()

    def clear(self) -> None:
        self.table.clear()

    def stats(self) -> dict[str, Any]:
        return self.table.stats()


def attach(session: orm.Session, model: type, record: Record) -> Any:
    """The `model` instance for `record` in `session`, without a query.

    An instance already in the session's identity map is returned as it is; otherwise a
    detached instance is built from the record's column values and added as persistent and
    clean (nothing to flush). Only the caller's session ever holds it."""
    mapper = sa.inspect(model)
    pk = tuple(record[c.key] for c in mapper.primary_key)
    identity = orm.util.identity_key(model, pk if len(pk) > 1 else pk[0])
    existing = session.identity_map.get(identity)
    if existing is not None:
        return existing
    values = {
        attr.key: record[attr.columns[0].key]
        for attr in mapper.column_attrs
        if attr.columns[0].key in record
    }
    instance = model(**values)
    orm.make_transient_to_detached(instance)
    session.add(instance)
    return instance
