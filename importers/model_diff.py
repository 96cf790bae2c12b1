"""The compare of one versioned model: its live rows against the current version of each
key, as SQL pieces (joins and conditions) that counting, probing and writing share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy_continuum.operation import Operation

from cachework.importers.model_shape import ModelShape
from cachework.importers.sql import differs, same_key


def current(shape: ModelShape, tx: int | None, several_open: bool) -> sa.Subquery:
    """At most one row per key of the base version table: the open version (validity)
    or the newest (subquery); the newest open one when some key has `several_open`. A
    version written by this run (`tx`) never counts."""
    v = shape.root.versions
    where: list[Any] = []
    if tx is not None:
        where.append(v.c[shape.tx] != tx)
    if shape.validity:
        where.append(v.c[shape.end].is_(None))
    if not shape.validity or several_open:
        newer = v.alias("newer")
        keys = [c for _l, c in shape.root.keys]
        inner = same_key([newer.c[c.key] for c in keys], keys)
        inner.append(newer.c[shape.tx] > v.c[shape.tx])
        if tx is not None:
            inner.append(newer.c[shape.tx] != tx)
        if shape.validity:
            inner.append(newer.c[shape.end].is_(None))
        where.append(~sa.exists(sa.select(sa.literal(1)).select_from(newer).where(*inner)))
    return sa.select(v).where(*where).subquery("cur")


def _targets(shape: ModelShape, cur: sa.Subquery) -> tuple[sa.FromClause, list[sa.FromClause]]:
    """`cur` joined to the version tables below the base (same key and transaction)."""
    tables: list[sa.FromClause] = [cur]
    for i, level in enumerate(shape.levels[1:], 1):
        tables.append(level.versions.alias(f"lv{i}"))
    joined: sa.FromClause = cur
    for i, level in enumerate(shape.levels[1:], 1):
        joined = joined.outerjoin(tables[i], level.version_join(tables[i - 1], tables[i]))
    return joined, tables


@dataclass(frozen=True)
class Diff:
    """The pieces of the compare: `joined` (live rows to current versions), `missing`
    (no current version, or a delete), `differs` (some column changed) and, per level,
    each column's own "differs" (`flags`, for PropertyModTracker)."""

    shape: ModelShape
    cur: sa.Subquery
    tables: list[sa.FromClause]  # `cur`, then the lower levels' version tables
    joined: sa.FromClause
    missing: Any
    differs: Any
    flags: list[dict[sa.Column, Any]]

    def changed(self, create: bool, update: bool) -> list[Any]:
        """Where a live row needs a new version (of the kinds allowed)."""
        wanted = []
        if create:
            wanted.append(self.missing)
        if update:
            wanted.append(sa.and_(sa.not_(self.missing), self.differs))
        live = self.shape.partition(self.shape.root.live)
        return [sa.or_(*wanted) if wanted else sa.false(), *live]

    def gone(self) -> list[Any]:
        """Where a current version's live row is gone (and it is no delete version)."""
        shape, cur = self.shape, self.cur
        keys = shape.root.keys
        live_row = (
            sa.select(sa.literal(1))
            .select_from(shape.root.live)
            .where(*same_key([live for live, _v in keys], [cur.c[v.key] for _l, v in keys]))
        )
        return [
            cur.c[shape.op] != Operation.DELETE,
            ~sa.exists(live_row),
            *shape.partition(cur),
        ]


def compare(shape: ModelShape, dialect: sa.Dialect, tx: int | None, several_open: bool) -> Diff:
    """The compare's pieces; `tx`: the run's transaction, whose versions never count."""
    cur = current(shape, tx, several_open)
    targets, tables = _targets(shape, cur)
    keys = shape.root.keys
    on = same_key([live for live, _v in keys], [cur.c[v.key] for _l, v in keys])
    joined = shape.source().outerjoin(targets, sa.and_(*on))
    missing = sa.or_(cur.c[keys[0][1].key].is_(None), cur.c[shape.op] == Operation.DELETE)
    flags: list[dict[sa.Column, Any]] = []
    changes = []
    for level, table in zip(shape.levels, tables, strict=True):
        level_flags = {}
        for live, vcol in level.pairs:
            if live.primary_key:
                continue
            d = differs(live, table.c[vcol.key], live.type, dialect)
            if live in level.only:
                d = sa.and_(shape.is_(level.only[live]), d)
            changes.append(d)
            level_flags[live] = d
        flags.append(level_flags)
    any_change = sa.or_(*changes) if changes else sa.false()
    return Diff(shape, cur, tables, joined, missing, any_change, flags)
