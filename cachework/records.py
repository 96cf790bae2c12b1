"""Plain immutable records: what cached tables store and hand out.

A record is a read-only mapping of column name to value (`types.MappingProxyType` over a
private dict), never an ORM instance, so it can be shared by every thread and session of a
process without merging or expiry. `to_json` turns one into a JSON object for task results;
`coerce` turns a key from the outside world (a CLI passes strings) into a column's type.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from cachework.errors import ValidationError

Record = Mapping[str, Any]


def make_record(values: Mapping[str, Any]) -> Record:
    """A read-only copy of `values`: later changes to `values` never reach the cache."""
    return MappingProxyType({k: freeze(v) for k, v in values.items()})


def freeze(value: Any) -> Any:
    """`value` with every nested dict made read-only and every list a tuple (JSON columns)."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def record_from(obj: object, columns: Iterable[str]) -> Record:
    """A record from a mapping, a Row or an ORM instance, keeping only `columns`."""
    columns = tuple(columns)
    if isinstance(obj, Mapping):
        return MappingProxyType({c: freeze(obj[c]) for c in columns})
    mapping = getattr(obj, "_mapping", None)
    if mapping is not None:
        return MappingProxyType({c: freeze(mapping[c]) for c in columns})
    return MappingProxyType({c: freeze(getattr(obj, c)) for c in columns})


def json_value(value: Any) -> Any:
    """A JSON-safe form of one column value (Decimal as an exact string, times as ISO 8601)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    return str(value)


def to_json(record: Record | None) -> dict[str, Any] | None:
    """The record as a JSON object (a fresh dict), or None."""
    if record is None:
        return None
    return {key: json_value(value) for key, value in record.items()}


def coerce(value: Any, python_type: type | None, what: str) -> Any:
    """`value` converted to `python_type`; ValidationError naming `what` when it cannot be.

    Strings are parsed (a CLI passes every key as text); booleans are never taken for
    numbers; an unknown type (None) leaves the value alone.
    """
    if python_type is None or (isinstance(value, python_type) and not isinstance(value, bool)):
        return value
    if python_type is bool and isinstance(value, bool):
        return value
    try:
        if isinstance(value, bool) or value is None:
            raise TypeError
        if python_type is int:
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, Decimal) and value == value.to_integral_value():
                return int(value)
            raise TypeError
        if python_type is str:
            if isinstance(value, int | uuid.UUID):
                return str(value)
            raise TypeError
        if python_type is Decimal:
            return Decimal(str(value))
        if python_type is float:
            return float(value)
        if python_type is uuid.UUID:
            return uuid.UUID(str(value))
        if python_type is dt.datetime:
            return dt.datetime.fromisoformat(str(value))
        if python_type is dt.date:
            return dt.date.fromisoformat(str(value))
        if python_type is dt.time:
            return dt.time.fromisoformat(str(value))
        return python_type(value)
    except (TypeError, ValueError, InvalidOperation):
        raise ValidationError(f"{what}={value!r} is not a valid {python_type.__name__}") from None
