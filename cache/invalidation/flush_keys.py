"""The keys a flush's rows name: for each flushed object (new, changed, deleted), the old
and new values of the columns its dependencies key on.

Which columns of a mapped class matter is worked out once per mapper (`FlushPlans`), so a
flush costs a few dict look-ups per object.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import orm
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE, LoaderCallableStatus

from cachework.cache.invalidation.dependencies import Dependency
from cachework.cache.invalidation.tracked_keys import Keys, attribute_of


@dataclass
class _Plan:
    """How one mapped table's rows turn into keys (per mapper, made once)."""

    attrs: frozenset[str]  # attribute keys of this table's columns
    keyed: list[tuple[str, str | None, int | None]]  # (cached, attribute, pk position)
    whole: list[str]  # cached tables invalidated whole by any write


class FlushPlans:
    """Per mapper, how its flushed objects name keys of the cached tables in `by_base`
    (base table name -> its dependencies)."""

    def __init__(self, by_base: dict[str, list[Dependency]]) -> None:
        self.by_base = by_base
        self._plans: dict[orm.Mapper, list[_Plan]] = {}
        self._lock = threading.Lock()

    def collect(self, keys: Keys, state: orm.InstanceState, kind: str) -> None:
        """Add the keys one flushed object names; `kind`: new, dirty or deleted."""
        plans = self._plans_for(state.mapper)
        if not plans:
            return
        committed = state.committed_state
        values = state.dict
        for plan in plans:
            changed: set[str] | frozenset[str] = plan.attrs
            if kind == "dirty":
                changed = _changed(state, plan.attrs.intersection(committed))
                if not changed:
                    continue  # no column of this table changed: no UPDATE of its row
            for cached in plan.whole:
                keys.whole(cached)
            for cached, attr, position in plan.keyed:
                if kind == "new":
                    current = values.get(attr, LoaderCallableStatus.NO_VALUE)
                    _add(keys, cached, current, state, position)
                    continue
                old = committed.get(attr, values.get(attr, LoaderCallableStatus.NO_VALUE))
                _add(keys, cached, old, state, position, identity=True)
                if kind == "dirty" and attr in changed:
                    current = values.get(attr, LoaderCallableStatus.NO_VALUE)
                    _add(keys, cached, current, state, None)

    def _plans_for(self, mapper: orm.Mapper) -> list[_Plan]:
        plans = self._plans.get(mapper)
        if plans is None:
            plans = [
                self._plan(mapper, table, deps)
                for table in mapper.tables
                if (deps := self.by_base.get(table.fullname))
            ]
            with self._lock:
                self._plans[mapper] = plans
        return plans

    @staticmethod
    def _plan(mapper: orm.Mapper, table: Any, deps: list[Dependency]) -> _Plan:
        attrs = frozenset(a for a in (attribute_of(mapper, c) for c in table.columns) if a)
        keyed, whole = [], []
        for dep in deps:
            column = table.c.get(dep.column) if dep.column is not None else None
            attr = attribute_of(mapper, column) if column is not None else None
            if attr is None:
                whole.append(dep.cached)
                continue
            position = next(
                (i for i, pk in enumerate(mapper.primary_key) if attribute_of(mapper, pk) == attr),
                None,
            )
            keyed.append((dep.cached, attr, position))
        return _Plan(attrs, keyed, whole)


def _add(
    keys: Keys,
    cached: str,
    value: Any,
    state: orm.InstanceState,
    position: int | None,
    identity: bool = False,
) -> None:
    if isinstance(value, LoaderCallableStatus):
        if identity and position is not None and state.key is not None:
            keys.add(cached, state.key[1][position])  # the row's primary key, as loaded
        else:
            keys.whole(cached)  # a value never loaded: cannot name the key
        return
    keys.add(cached, value)


def _changed(state: orm.InstanceState, attrs: set[str]) -> set[str]:
    """The attributes among `attrs` whose value really changed: one set to the value it
    had is in `committed_state` too, but the flush issues no UPDATE for it."""
    return {
        attr
        for attr in attrs
        if state.manager[attr]
        .impl.get_history(state, state.dict, PASSIVE_NO_INITIALIZE)
        .has_changes()
    }
