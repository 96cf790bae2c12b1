"""The keys an INSERT/UPDATE/DELETE statement names, worked out before it runs.

An INSERT, or any statement run with a list of parameter rows, names its keys in those
rows. An UPDATE or DELETE by criteria names them in `RETURNING`: the key columns are added
as `return_defaults` (so the caller's result and `rowcount` are unchanged) where the
database has it, and read from the result afterwards (`read_returned`). Whatever cannot be
known that way invalidates the whole cached table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm.base import LoaderCallableStatus

from cachework.cache.invalidation.dependencies import Dependency
from cachework.cache.invalidation.tracked_keys import Keys, attribute_of


class StatementPlan(NamedTuple):
    """Keys known before the statement runs, the (cached, column) pairs to read from its
    RETURNING, and the statement to run (with those columns added)."""

    keys: Keys
    keyed: list[tuple[str, sa.Column]]
    statement: Any


def plan_statement(
    statement: Any,
    params: Any,
    mapper: Any,
    dialect: sa.Dialect,
    by_base: dict[str, list[Dependency]],
    max_keys: int,
) -> StatementPlan | None:
    """The plan of an INSERT/UPDATE/DELETE of a table cached tables read (`by_base`: base
    table name -> its dependencies); None when no cached table reads its table."""
    if not isinstance(statement, sa.Insert | sa.Update | sa.Delete):
        return None
    target = getattr(statement, "table", None)
    deps = by_base.get(getattr(target, "fullname", None))
    if not deps:
        return None
    keys = Keys(max_keys)
    is_insert = isinstance(statement, sa.Insert)
    many = isinstance(params, list) and params and isinstance(params[0], Mapping)
    if is_insert or many:
        rows = params if many else None
        if is_insert and getattr(statement, "_post_values_clause", None) is not None:
            rows = None  # an upsert may change rows other than the ones it names
        _keys_from_rows(keys, deps, target, mapper, rows, pk_only=not is_insert)
        return StatementPlan(keys, [], statement)
    return _plan_returning(keys, deps, target, statement, dialect)


def read_returned(keys: Keys, keyed: list[tuple[str, sa.Column]], result: Any) -> None:
    """Add the keys a statement's RETURNING (its `return_defaults` rows) named."""
    rows = getattr(result, "returned_defaults_rows", None)
    if rows is None and getattr(result, "rowcount", -1) == 0:
        return  # RETURNING came back empty (SQLAlchemy keeps no rows then): no row written
    for cached, column in keyed:
        if rows is None:
            keys.whole(cached)
            continue
        for row in rows:
            keys.add(cached, row._mapping[column])


def _keys_from_rows(
    keys: Keys,
    deps: list[Dependency],
    target: Any,
    mapper: Any,
    rows: list[Mapping] | None,
    *,
    pk_only: bool,
) -> None:
    """Keys named by a statement's parameter rows (None: the rows cannot tell)."""
    for dep in deps:
        names = _names(dep, target, mapper, pk_only=pk_only)
        if rows is None or names is None:
            keys.whole(dep.cached)
            continue
        for row in rows:
            value = next((row[n] for n in names if n in row), LoaderCallableStatus.NO_VALUE)
            if value is LoaderCallableStatus.NO_VALUE:
                keys.whole(dep.cached)
                break
            keys.add(dep.cached, value)


def _plan_returning(
    keys: Keys, deps: list[Dependency], target: Any, statement: Any, dialect: sa.Dialect
) -> StatementPlan:
    """An UPDATE/DELETE by criteria: its keys come back in RETURNING where they can."""
    is_update = isinstance(statement, sa.Update)
    can_return = dialect.update_returning if is_update else dialect.delete_returning
    set_columns = _set_columns(statement) if is_update else set()
    keyed: list[tuple[str, sa.Column]] = []
    for dep in deps:
        column = target.c.get(dep.column) if dep.column is not None else None
        if (
            column is None
            or not can_return
            or statement._returning
            or statement._return_defaults
            or set_columns is None
            or column.key in set_columns
        ):
            keys.whole(dep.cached)  # old keys unknowable from RETURNING
        else:
            keyed.append((dep.cached, column))
    if keyed:
        columns = list(dict.fromkeys(column for _cached, column in keyed))
        statement = statement.return_defaults(*columns, supplemental_cols=columns)
    return StatementPlan(keys, keyed, statement)


def _names(dep: Dependency, target: Any, mapper: Any, *, pk_only: bool) -> tuple | None:
    """Parameter names that carry `dep.column` in a bulk statement's rows (None: none can)."""
    if dep.column is None:
        return None
    column = target.c.get(dep.column)
    if column is None:
        return None
    names = [column.key]
    attr = attribute_of(mapper, column) if mapper is not None else None
    if attr is not None:
        names.insert(0, attr)
        if pk_only and not any(column is pk for pk in mapper.local_table.primary_key):
            return None  # bulk UPDATE by primary key: other columns' old values are unknown
    elif pk_only and not column.primary_key:
        return None
    return tuple(names)


def _set_columns(statement: Any) -> set[str] | None:
    """Keys of the columns an UPDATE sets (None: cannot tell)."""
    values = getattr(statement, "_values", None)
    ordered = getattr(statement, "_ordered_values", None)
    if getattr(statement, "_multi_values", None):
        return None
    pairs = list(values.keys()) if values else []
    if ordered:
        pairs.extend(k for k, _v in ordered)
    out = set()
    for key in pairs:
        if isinstance(key, str):
            out.add(key)
        else:
            name = getattr(key, "key", None)
            if not isinstance(name, str):
                return None
            out.add(name)
    return out
