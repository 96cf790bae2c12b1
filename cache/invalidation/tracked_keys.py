"""The keys a tracked transaction invalidates, per cached table, as its writes name them.

Events name primary keys only. An index value change needs no extra key: the old and the
new index value belong to the same row, so to the same cached primary key; invalidating
that key makes the refresh delete the stored record (and with it its entries under the
old value) and load the row by primary key (its entries under the new value), and an
invalidation by primary key marks the table's other indexes dirty, so reads by old or new
value refresh first. Where the cached primary key is itself a non-key base column (a table
cached by `code`), the event names both its old and its new value.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from cachework.cache.invalidation.events import Event, validate_event
from cachework.errors import ValidationError

log = logging.getLogger(__name__)
WHOLE = None  # a cached table's keys when every record must go


class Keys:
    """Keys per cached table for one transaction (None: the whole table)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.by_table: dict[str, dict | None] = {}

    def whole(self, cached: str) -> None:
        self.by_table[cached] = WHOLE

    def add(self, cached: str, value: Any) -> None:
        keys = self.by_table.setdefault(cached, {})
        if keys is WHOLE:
            return
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | str | uuid.UUID | Decimal):
            self.by_table[cached] = WHOLE  # not a key an event can carry: never silent
            return
        keys[value] = None
        if len(keys) > self.max_keys:  # a whole-table event anyway: stop collecting
            self.by_table[cached] = WHOLE

    def merge(self, other: Keys) -> None:
        for cached, keys in other.by_table.items():
            if keys is WHOLE:
                self.whole(cached)
                continue
            for value in keys:
                self.add(cached, value)

    def events(self) -> list[Event]:
        max_keys = self.max_keys
        out = []
        for cached, keys in self.by_table.items():
            if keys is not WHOLE and not keys:
                continue
            if keys is WHOLE or len(keys) > max_keys:
                out.append(Event(cached))
                continue
            try:
                out.append(validate_event(cached, list(keys), max_keys=max_keys))
            except ValidationError as exc:
                log.warning("invalidating all of %s: %s", cached, exc)
                out.append(Event(cached))
        return out


def attribute_of(mapper: orm.Mapper, column: sa.Column) -> str | None:
    """The attribute key `mapper` maps `column` to, or None."""
    try:
        return mapper.get_property_by_column(column).key
    except orm.exc.UnmappedColumnError:
        return None
