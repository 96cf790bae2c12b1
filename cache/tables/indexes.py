"""Indexes of a cached table and the specs that name sets of records through them.

An index reads one column of each record. Four kinds:

- `PrimaryKey` - unique, exactly one per table; the fast `CachedTable.get` path uses it.
- `Unique` - a unique secondary key (e.g. a category's code).
- `NonUnique` - a secondary key many records may share.
- `Range` - an orderable column (a timestamp, a number); supports range specs, so the cache
  can cover, load and expire a range of it (`adjust`).

A `Spec` names a set of records through one index: some exact values, a half-open range
`[ge, lt)` (Range indexes only; None = unbounded), or everything. The set maths on specs
(overlap, containment, difference) are pure functions here, tested without a database.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from cachework.errors import ValidationError


@dataclass(frozen=True)
class Index:
    """One index: its name (used in specs) and the record column it reads."""

    column: str
    name: str | None = None

    kind = "index"
    unique = False
    ranged = False

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise ValidationError(f"index column={self.column!r} must be a column name")
        if self.name is None:
            object.__setattr__(self, "name", self.column)


class PrimaryKey(Index):
    kind = "primary_key"
    unique = True


class Unique(Index):
    kind = "unique"
    unique = True


class NonUnique(Index):
    kind = "non_unique"


class Range(Index):
    """An orderable column; records whose value is None are not in the index."""

    kind = "range"
    ranged = True


@dataclass(frozen=True)
class Spec:
    """A set of records named through index `index`.

    Exactly one of: `values` (exact values), a range (`is_range`, bounds `ge`/`lt`, None
    meaning unbounded), or `everything`.
    """

    index: str
    values: tuple | None = None
    ge: Any = None
    lt: Any = None
    is_range: bool = False
    everything: bool = False

    @classmethod
    def of(cls, index: str, *values: Hashable) -> Spec:
        """The records whose `index` value is one of `values`."""
        return cls(index, values=tuple(dict.fromkeys(values)))

    @classmethod
    def range(cls, index: str, ge: Any = None, lt: Any = None) -> Spec:
        """The records with `ge <= value < lt` on a Range index (None = unbounded)."""
        return cls(index, ge=ge, lt=lt, is_range=True)

    @classmethod
    def all(cls, index: str) -> Spec:
        """Every record of the source."""
        return cls(index, everything=True)

    def matches(self, value: Any) -> bool:
        """Whether a record whose index value is `value` belongs to this set."""
        if self.everything:
            return True
        if self.values is not None:
            return value in self.values
        if value is None:
            return False
        return (self.ge is None or value >= self.ge) and (self.lt is None or value < self.lt)

    def __repr__(self) -> str:
        if self.everything:
            return f"Spec.all({self.index!r})"
        if self.values is not None:
            return f"Spec.of({self.index!r}, {', '.join(map(repr, self.values))})"
        return f"Spec.range({self.index!r}, ge={self.ge!r}, lt={self.lt!r})"


def make_spec(args: tuple, kwargs: dict) -> Spec:
    """A Spec from `get_records`-style arguments: a Spec; `index, *values`;
    `index, ge=..., lt=...`; or `index, everything=True`."""
    if len(args) == 1 and isinstance(args[0], Spec) and not kwargs:
        return args[0]
    if not args or not isinstance(args[0], str):
        raise ValidationError(
            f"records are named by a Spec or an index name and values, not {args!r} {kwargs!r}"
        )
    index, values = args[0], args[1:]
    if kwargs.pop("everything", False):
        if values or kwargs:
            raise ValidationError("everything=True takes no values or bounds")
        return Spec.all(index)
    if kwargs:
        unknown = set(kwargs) - {"ge", "lt"}
        if unknown or values:
            raise ValidationError(
                f"a range spec takes only ge= and lt=, got values={values!r} {kwargs!r}"
            )
        return Spec.range(index, kwargs.get("ge"), kwargs.get("lt"))
    if not values:
        raise ValidationError(f"spec on index {index!r} names no values; use everything=True")
    return Spec.of(index, *values)


def _lower(ge: Any) -> tuple:
    return (0,) if ge is None else (1, ge)


def _upper(lt: Any) -> tuple:
    return (2,) if lt is None else (1, lt)


def overlaps(a: Spec, b: Spec) -> bool:
    """Whether two specs on the same index can name a common record."""
    if a.everything or b.everything:
        return True
    if a.values is not None and b.values is not None:
        small, large = sorted((a.values, b.values), key=len)
        large_set = set(large)
        return any(v in large_set for v in small)
    if a.values is not None:
        return any(b.matches(v) for v in a.values)
    if b.values is not None:
        return any(a.matches(v) for v in b.values)
    return max(_lower(a.ge), _lower(b.ge)) < min(_upper(a.lt), _upper(b.lt))


def within(a: Spec, cover: Spec) -> bool:
    """Whether every record `a` names is also named by `cover` (same index, or everything)."""
    if cover.everything:
        return True
    if a.everything or a.index != cover.index:
        return False
    if a.values is not None:
        return all(cover.matches(v) for v in a.values)
    if cover.values is not None:
        return False
    return _lower(a.ge) >= _lower(cover.ge) and _upper(a.lt) <= _upper(cover.lt)


def difference(a: Spec, b: Spec) -> list[Spec] | None:
    """Specs naming the records of `a` that are not in `b`; None when that set cannot be
    written as specs on `a`'s index (the caller then filters record by record)."""
    if within(a, b):
        return []
    if a.everything:
        return None
    if b.everything:
        return []
    if a.index != b.index:
        return None
    if a.values is not None:
        rest = tuple(v for v in a.values if not b.matches(v))
        return [Spec(a.index, values=rest)] if rest else []
    if b.values is not None:
        return None
    parts = []
    if _lower(a.ge) < _lower(b.ge):
        upper = b.ge if _upper(a.lt) > _lower(b.ge) else a.lt
        parts.append(Spec.range(a.index, a.ge, upper))
    if _upper(a.lt) > _upper(b.lt):
        lower = b.lt if _lower(a.ge) < _upper(b.lt) else a.ge
        parts.append(Spec.range(a.index, lower, a.lt))
    return [p for p in parts if p.ge is None or p.lt is None or p.ge < p.lt]


def check_indexes(indexes: Sequence[Index]) -> tuple[Index, dict[str, Index]]:
    """The primary key and the indexes by name; ValidationError when malformed."""
    by_name: dict[str, Index] = {}
    for index in indexes:
        if not isinstance(index, Index):
            raise ValidationError(f"{index!r} is not an Index (PrimaryKey, Unique, ...)")
        if index.name in by_name:
            raise ValidationError(f"index name {index.name!r} is used twice")
        by_name[index.name] = index
    keys = [i for i in indexes if isinstance(i, PrimaryKey)]
    if len(keys) != 1:
        raise ValidationError(f"a cached table needs exactly one PrimaryKey index, got {keys!r}")
    return keys[0], by_name


def check_spec(spec: Spec, indexes: dict[str, Index]) -> Index:
    """The index `spec` names; ValidationError naming the bad index or form."""
    index = indexes.get(spec.index)
    if index is None:
        raise ValidationError(f"index {spec.index!r} does not exist; indexes: {sorted(indexes)}")
    if spec.is_range and not index.ranged:
        raise ValidationError(
            f"index {spec.index!r} is {index.kind}, not a Range index: it takes exact values"
        )
    if spec.values is not None:
        for value in spec.values:
            try:
                hash(value)
            except TypeError:
                raise ValidationError(
                    f"index {spec.index!r} value {value!r} is not hashable"
                ) from None
    return index
