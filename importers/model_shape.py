"""The shape of one versioned model for the import: its hierarchy's tables (live and
version), the columns copied from one to the other, PropertyModTracker's flags, its
Continuum options, and which rows of a shared base table are its own. Pure description,
read from the mappers: nothing here touches the database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.plugins import NullDeletePlugin, PropertyModTrackerPlugin
from sqlalchemy_continuum.utils import get_versioning_manager, option

from cachework.importers.sql import maps, replace_columns


@dataclass
class Level:
    """One table of a model's hierarchy: live and version table, the columns copied from
    one to the other and PropertyModTracker's flags."""

    live: sa.Table
    versions: sa.Table
    pairs: list[tuple[sa.Column, sa.Column]]  # live column -> version column
    keys: list[tuple[sa.Column, sa.Column]]  # primary key: live -> version
    mods: list[tuple[sa.Column, sa.Column, sa.Column]]  # flag, live column, version column
    # Columns only some single-table classes map: their polymorphic identities (Continuum
    # versions such a column only for objects of those classes).
    only: dict[sa.Column, list[Any]] = field(default_factory=dict)
    join: sa.ColumnElement[bool] | None = None  # live: to the level above
    version_join: Callable[[sa.FromClause, sa.FromClause], Any] | None = None


def single_family(mapper: Mapper) -> list[Mapper]:
    """The mapper and its descendants that share its table (single-table)."""
    family = [mapper]
    for sub in mapper.self_and_descendants:
        if sub is not mapper and sub.local_table is mapper.local_table:
            family.append(sub)
    return family


class ModelShape:
    """A versioned class with a table of its own (with the single-table subclasses that
    share it), as the import sees it."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.mapper: Mapper = sa.inspect(cls)
        manager = get_versioning_manager(cls)
        self.validity = option(cls, "strategy") == "validity"
        self.tx = option(cls, "transaction_column_name")
        self.end = option(cls, "end_transaction_column_name")
        self.op = option(cls, "operation_type_column_name")
        self.mod_tracking = any(isinstance(p, PropertyModTrackerPlugin) for p in manager.plugins)
        self.null_delete = any(isinstance(p, NullDeletePlugin) for p in manager.plugins)
        chain = [m for m in reversed(list(self.mapper.iterate_to_root())) if not m.single]
        self.levels = [self._level(m, chain[i - 1] if i else None) for i, m in enumerate(chain)]
        self.root = self.levels[0]
        self.classes = [m.class_ for m in single_family(self.mapper)]
        base = self.mapper.base_mapper
        self.joined = any(m.local_table is not base.local_table for m in base.self_and_descendants)
        self.mine = {m.polymorphic_identity for m in single_family(self.mapper)} - {None}
        self.claimed = {m.polymorphic_identity for m in base.self_and_descendants}
        self.claimed -= self.mine | {None}

    def _level(self, mapper: Mapper, parent: Mapper | None) -> Level:
        live: sa.Table = mapper.local_table
        versions: sa.Table = version_class(mapper.class_).__table__
        internal = {self.tx, self.end, self.op}
        by_name = {c.name: c for c in versions.c}
        pairs = [
            (c, by_name[c.name]) for c in live.c if c.name in by_name and c.name not in internal
        ]
        keys = [(c, by_name[c.name]) for c in live.primary_key.columns]
        family = single_family(self.mapper)
        mods = []
        only: dict[sa.Column, list[Any]] = {}
        for column, vcolumn in pairs:
            mapping = [m for m in family if maps(m, column)]
            if not mapping or column.primary_key:
                continue
            if len(mapping) < len(family):
                only[column] = sorted(m.polymorphic_identity for m in mapping)
            flag = self._mod_flag(mapping[0], column, versions)
            if flag is not None:
                mods.append((flag, column, vcolumn))
        level = Level(live, versions, pairs, keys, mods, only)
        if parent is not None:
            level.join = mapper.inherit_condition
            level.version_join = self._version_join(mapper, parent, live, versions)
        return level

    def _mod_flag(self, mapper: Mapper, column: sa.Column, versions: sa.Table) -> Any:
        """PropertyModTracker's flag column for `column` in `versions` (None: none).
        Continuum sets the attribute `<attribute key>_mod`; its column is named after the
        live column. Where the two differ, the flag stays false."""
        if not self.mod_tracking:
            return None
        prop = mapper.get_property_by_column(column)
        flag = sa.inspect(version_class(mapper.class_)).attrs.get(prop.key + "_mod")
        if flag is None or not hasattr(flag, "columns"):
            return None
        return flag.columns[0] if flag.columns[0].table is versions else None

    def _version_join(
        self, mapper: Mapper, parent: Mapper, live: sa.Table, versions: sa.Table
    ) -> Callable[[sa.FromClause, sa.FromClause], Any]:
        """The join of a level's version rows (`lower`) to the level above's (`upper`):
        the inherit condition on version columns, and the same transaction."""
        condition = mapper.inherit_condition
        parent_versions = version_class(parent.class_).__table__
        tx = self.tx

        def version_join(upper: sa.FromClause, lower: sa.FromClause) -> Any:
            mapping = {
                c: upper.c[parent_versions.c[c.name].key]
                for c in parent.local_table.c
                if c.name in parent_versions.c
            }
            mapping.update(
                {c: lower.c[versions.c[c.name].key] for c in live.c if c.name in versions.c}
            )
            return sa.and_(replace_columns(condition, mapping), upper.c[tx] == lower.c[tx])

        return version_join

    def planned_columns(self) -> dict[sa.Table, list[str]]:
        """The columns of each table the compare's plans depend on (for ANALYZE)."""
        disc = self.mapper.base_mapper.polymorphic_on if self.joined else None
        out: dict[sa.Table, list[str]] = {}
        for level in self.levels:
            keys = [live.name for live, _v in level.keys]
            extra = [disc.name] if disc is not None and level is self.root else []
            out[level.live] = [*keys, *extra]
            internal = [self.tx, self.op] + ([self.end] if self.validity else [])
            out[level.versions] = [*keys, *extra, *internal]
        return out

    def unsupported(self) -> list[str]:
        """What this model uses that the import cannot reproduce (empty: supported)."""
        found = []
        if option(self.cls, "native_versioning"):
            found.append("native versioning (PostgreSQL triggers write its versions)")
        if self.mapper.concrete:
            found.append("concrete-table inheritance")
        if self.joined:
            disc = self.mapper.base_mapper.polymorphic_on
            if not isinstance(disc, sa.Column) or disc.table is not self.root.live:
                found.append(
                    "joined-table inheritance without a polymorphic_on column in the base table"
                )
        for level in self.levels:
            known = {v.name for _l, v in level.pairs} | {self.tx, self.end, self.op}
            known |= {f.name for f, _l, _v in level.mods}
            if self.mod_tracking:
                known |= {c.name + "_mod" for c in level.live.c}
            extra = [c.name for c in level.versions.c if c.name not in known]
            if extra:
                found.append(
                    f"version table {level.versions.name} columns the import cannot fill: "
                    f"{', '.join(extra)}"
                )
        return found

    # --- rows of the hierarchy ---------------------------------------------------------

    def joined_mappers(self) -> list[Mapper]:
        """The mappers of the hierarchy that have a table of their own."""
        base = self.mapper.base_mapper
        return [m for m in base.self_and_descendants if not m.single]

    def table_keys(self, table: sa.Table) -> list[sa.Column]:
        """The primary key of a version table, without its transaction column."""
        return [c for c in table.primary_key.columns if c.name != self.tx]

    def partition(self, table: sa.FromClause) -> list[Any]:
        """Which rows of `table` (the base live table, or a base version table) are this
        unit's: in a joined hierarchy, those of its classes' polymorphic identities (the
        base class's unit: every row the other classes' identities do not claim); in a
        hierarchy of one table, all ([]). Only for a supported model (`unsupported()`)."""
        if not self.joined:
            return []
        base = self.mapper.base_mapper
        disc = base.polymorphic_on
        version_key = self.root.versions.c[disc.name].key
        column = disc if table is self.root.live else table.c[version_key]
        if self.mapper is base:
            return [sa.or_(column.is_(None), column.not_in(sorted(self.claimed)))]
        return [column.in_(sorted(self.mine))]

    def is_(self, identities: list[Any]) -> Any:
        """The live row is of one of these polymorphic identities."""
        return self.mapper.base_mapper.polymorphic_on.in_(identities)

    def source(self) -> sa.FromClause:
        """The live rows: the join of the hierarchy's tables down to this class's."""
        joined: sa.FromClause = self.root.live
        for level in self.levels[1:]:
            joined = joined.join(level.live, level.join)
        return joined

    def names(self, level: Level) -> list[sa.Column]:
        """The version table columns a write fills, in the order of `live_values`."""
        v = level.versions
        return [
            *(vcol for _l, vcol in level.pairs),
            v.c[self.tx],
            v.c[self.op],
            *(flag for flag, _l, _v in level.mods),
        ]

    def live_values(self, level: Level) -> list[Any]:
        """The live values a level's version row copies (NULL for a column the row's
        class does not map)."""
        return [
            sa.case((self.is_(level.only[live]), live), else_=sa.null())
            if live in level.only
            else live
            for live, _v in level.pairs
        ]
