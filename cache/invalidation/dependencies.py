"""What a cached table depends on: the base tables whose written rows invalidate it.

By default it is derived from the cached table's source select. The table its primary-key
column is selected from is a keyed dependency: a written row of that table invalidates the
cached primary keys equal to the row's old and new values of that column. Every other
table the select reads (joins, subqueries, aliases) invalidates the whole cached table. A
module named in `CACHEWORK_CACHED_TABLES` may replace that with `DEPENDS_ON = {cached
table: {base table: base column or None}}`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.util import find_tables

from cachework.errors import ConfigError


@dataclass(frozen=True)
class Dependency:
    """A write to a row of `base` invalidates cached table `cached`: the cached primary
    keys equal to the row's old and new `column` values, or every record when `column`
    is None."""

    cached: str
    base: str
    column: str | None = None


def source_dependencies(name: str, table: Any) -> list[Dependency]:
    """What cached table `name` (a CachedTable or FullTableCache) depends on, derived from
    its source select (see the module docstring)."""
    inner = getattr(table, "table", table)  # FullTableCache wraps a CachedTable
    select = inner.source.select
    key = _base_column(select.selected_columns.get(inner.primary_key.column))
    found = find_tables(select, include_aliases=True)
    aliased = {
        f.element.fullname
        for f in found
        if isinstance(f, sa.Alias) and isinstance(f.element, sa.Table)
    }
    deps: dict[str, Dependency] = {}
    for base in found:
        if not isinstance(base, sa.Table) or base.fullname in deps:
            continue
        column = None
        if key is not None and key.table is base and base.fullname not in aliased:
            column = key.name
        deps[base.fullname] = Dependency(name, base.fullname, column)
    return list(deps.values())


def _base_column(expr: Any) -> sa.Column | None:
    while isinstance(expr, sa.Label):
        expr = expr.element
    if isinstance(expr, sa.Column) and isinstance(expr.table, sa.Table):
        return expr
    return None


def declared_dependencies(modules: Iterable[str], names: Iterable[str]) -> dict[str, list]:
    """`DEPENDS_ON` of the cached-table modules: cached name -> [Dependency]."""
    names = set(names)
    out: dict[str, list[Dependency]] = {}
    for module_name in modules:
        declared = getattr(importlib.import_module(module_name), "DEPENDS_ON", None)
        if declared is None:
            continue
        if not isinstance(declared, Mapping):
            raise ConfigError(f"{module_name}.DEPENDS_ON must be a dict, not {declared!r}")
        for cached, bases in declared.items():
            if cached not in names:
                raise ConfigError(
                    f"{module_name}.DEPENDS_ON names {cached!r}, which is not a declared "
                    f"cached table (declared: {sorted(names)})"
                )
            out[cached] = list(_dependencies_from({cached: bases}))
    return out


def dependencies(source: Any) -> tuple[Dependency, ...]:
    """The dependencies of `source`: a runtime (its declared cached tables, derived from
    their sources unless `DEPENDS_ON` says otherwise, and what its plugins' items read),
    a mapping `{cached: {base: column or
    None}}`, or Dependency objects."""
    registry = getattr(source, "registry", None)
    settings = getattr(source, "settings", None)
    if registry is not None and settings is not None:
        names = registry.names()
        declared = declared_dependencies(settings.cached_tables, names)
        deps: list[Dependency] = []
        for name in names:
            if name in declared:
                deps.extend(declared[name])
            else:
                deps.extend(source_dependencies(name, registry.table(name)))
        # What project cache items read (cachework.cache.items.reads): their changes travel
        # as events of virtual cached tables, in the same outbox rows and log.
        item_reads = getattr(source, "item_reads", None)
        if item_reads is not None:
            deps.extend(item_reads.dependencies())
        return tuple(deps)
    return tuple(_dependencies_from(source))


def _dependencies_from(source: Any) -> Iterable[Dependency]:
    if isinstance(source, Mapping):
        for cached, bases in source.items():
            if isinstance(bases, str):
                bases = {bases: None}
            if not isinstance(bases, Mapping):
                raise ConfigError(
                    f"dependencies of {cached!r} must be a dict of base table -> base column "
                    f"(or None for the whole table), not {bases!r}"
                )
            for base, column in bases.items():
                yield _check(Dependency(cached, base, column))
        return
    for dep in source:
        if not isinstance(dep, Dependency):
            raise ConfigError(f"{dep!r} is not a Dependency")
        yield _check(dep)


def _check(dep: Dependency) -> Dependency:
    for field_name in ("cached", "base"):
        value = getattr(dep, field_name)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"dependency {field_name}={value!r} must be a table name")
    if dep.column is not None and (not isinstance(dep.column, str) or not dep.column):
        raise ConfigError(f"dependency column={dep.column!r} must be a column name or None")
    return dep
