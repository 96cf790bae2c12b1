"""In-process storage of a cached table: records by primary key plus one structure per index.

Unique indexes map value -> primary key, non-unique ones value -> set of primary keys, and
Range indexes keep a sorted list of (value, primary key) searched with bisect, so a range
read costs O(log n + k) and changing one record O(log n) plus a memmove. Storage is not
locked itself: the CachedTable owns the lock and decides who may write and read.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from cachework.cache.tables.indexes import Index, NonUnique, PrimaryKey, Range, Spec, Unique
from cachework.records import Record


class LocalStorage:
    """Records held in this process's memory (the default storage)."""

    def __init__(self) -> None:
        self.records: dict[Hashable, Record] = {}
        self._indexes: tuple[Index, ...] = ()
        self._pk = ""
        self._unique: dict[str, dict[Hashable, Hashable]] = {}
        self._multi: dict[str, dict[Hashable, set[Hashable]]] = {}
        self._sorted: dict[str, list[tuple[Any, Hashable]]] = {}

    def bind(self, indexes: Sequence[Index]) -> None:
        """Set up one structure per index (called once by the CachedTable)."""
        self._indexes = tuple(indexes)
        self._pk = next(i.column for i in indexes if isinstance(i, PrimaryKey))
        self.clear()

    def clear(self) -> None:
        self.records = {}
        self._unique = {i.name: {} for i in self._indexes if isinstance(i, Unique)}
        self._multi = {i.name: {} for i in self._indexes if isinstance(i, NonUnique)}
        self._sorted = {i.name: [] for i in self._indexes if isinstance(i, Range)}

    def __len__(self) -> int:
        return len(self.records)

    def get(self, pk: Hashable) -> Record | None:
        return self.records.get(pk)

    def put(self, record: Record) -> None:
        """Store `record`, replacing any record with the same primary key."""
        pk = record[self._pk]
        if pk in self.records:
            self.delete(pk)
        self.records[pk] = record
        for index in self._indexes:
            value = record.get(index.column)
            if isinstance(index, Unique):
                if value is not None:  # NULLs are not unique: found by scanning
                    self._unique[index.name][value] = pk
            elif isinstance(index, NonUnique):
                self._multi[index.name].setdefault(value, set()).add(pk)
            elif isinstance(index, Range) and value is not None:
                insort(self._sorted[index.name], (value, pk))

    def delete(self, pk: Hashable) -> Record | None:
        """Remove the record with primary key `pk`; returns it (None if absent)."""
        record = self.records.pop(pk, None)
        if record is None:
            return None
        for index in self._indexes:
            value = record.get(index.column)
            if isinstance(index, Unique):
                mapping = self._unique[index.name]
                if mapping.get(value) == pk:
                    del mapping[value]
            elif isinstance(index, NonUnique):
                pks = self._multi[index.name].get(value)
                if pks is not None:
                    pks.discard(pk)
                    if not pks:
                        del self._multi[index.name][value]
            elif isinstance(index, Range) and value is not None:
                entries = self._sorted[index.name]
                at = bisect_left(entries, (value, pk))
                if at < len(entries) and entries[at] == (value, pk):
                    del entries[at]
        return record

    def pks(self, spec: Spec, index: Index) -> Iterable[Hashable]:
        """Primary keys of the stored records that `spec` names (through `index`)."""
        if spec.everything:
            return list(self.records)
        if isinstance(index, PrimaryKey):
            if spec.values is not None:
                return [v for v in spec.values if v in self.records]
            return [pk for pk in self.records if spec.matches(pk)]
        if isinstance(index, Unique):
            mapping = self._unique[index.name]
            values = spec.values or ()
            found = [mapping[v] for v in values if v is not None and v in mapping]
            if None in values:
                found += [pk for pk, r in self.records.items() if r.get(index.column) is None]
            return found
        if isinstance(index, NonUnique):
            multi = self._multi[index.name]
            return [pk for v in spec.values or () for pk in multi.get(v, ())]
        entries = self._sorted[index.name]
        if spec.values is not None:
            out = []
            for value in spec.values:
                if value is None:
                    continue
                at = bisect_left(entries, (value,))
                while at < len(entries) and entries[at][0] == value:
                    out.append(entries[at][1])
                    at += 1
            return out
        lo = 0 if spec.ge is None else bisect_left(entries, (spec.ge,))
        hi = len(entries) if spec.lt is None else bisect_left(entries, (spec.lt,))
        return [pk for _value, pk in entries[lo:hi]]

    def matching(self, spec: Spec, index: Index) -> list[Record]:
        records = self.records
        return [records[pk] for pk in self.pks(spec, index)]
