"""The writes of one versioned model in the run's transaction, as Continuum's flush
would make them: new version rows (every table of the hierarchy, with PropertyModTracker's
flags), delete versions, the superseded versions closed (validity strategy), and the
repair of keys with several open versions. All INSERT ... SELECT and UPDATE."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.operation import Operation

from cachework.importers.model_diff import Diff
from cachework.importers.model_shape import Level, ModelShape
from cachework.importers.sql import rowcount, same_key


class VersionWriter:
    """Writes one model's versions in transaction `tx` of `session`."""

    def __init__(self, shape: ModelShape, session: Session, tx: int) -> None:
        self.shape = shape
        self.session = session
        self.tx = tx
        self.literal_tx = sa.literal(tx, sa.BigInteger)

    def changed(self, d: Diff, create: bool, update: bool) -> tuple[int, int, set[str]]:
        """Versions for new (create) and changed (update) live rows; returns how many of
        each were written and the class names they are of."""
        shape = self.shape
        condition = d.changed(create, update)
        kind = sa.case((d.missing, Operation.INSERT), else_=Operation.UPDATE)
        # Levels with mod flags need the previous version: from the compare, deepest
        # first (the base version table still holds no row of `tx` to skip); the
        # others copy the live rows of the keys whose base version was just written.
        late = [i for i, level in enumerate(shape.levels) if i and not level.mods]
        early = [i for i in range(len(shape.levels)) if i not in late]
        for index in reversed(early):
            level = shape.levels[index]
            values = [*shape.live_values(level), self.literal_tx, kind]
            for _flag, live, _v in level.mods:
                changed = sa.or_(d.missing, d.flags[index][live])
                if live in level.only:
                    changed = sa.and_(shape.is_(level.only[live]), changed)
                values.append(changed)
            rows = sa.select(*values).select_from(d.joined).where(*condition)
            self.session.execute(sa.insert(level.versions).from_select(shape.names(level), rows))
        for index in late:
            self._from_base(shape.levels[index])
        v = shape.root.versions
        written = sa.and_(
            v.c[shape.tx] == self.tx, v.c[shape.op] != Operation.DELETE, *shape.partition(v)
        )
        count = sa.select(v.c[shape.op], sa.func.count()).where(written).group_by(v.c[shape.op])
        by_op = dict(self.session.execute(count).all())
        created, updated = int(by_op.get(Operation.INSERT, 0)), int(by_op.get(Operation.UPDATE, 0))
        entities = self.entities(v, written) if created + updated else set()
        return created, updated, entities

    def _from_base(self, level: Level) -> None:
        """A lower table's versions (no mod flags) for the keys whose base version this
        run just wrote: the live rows, the base version's operation."""
        shape = self.shape
        new = shape.root.versions.alias("new")
        keys = shape.root.keys
        on = same_key([live for live, _v in keys], [new.c[v.key] for _l, v in keys])
        source = shape.source().join(new, sa.and_(*on))
        rows = (
            sa.select(*shape.live_values(level), self.literal_tx, new.c[shape.op])
            .select_from(source)
            .where(
                new.c[shape.tx] == self.tx,
                new.c[shape.op] != Operation.DELETE,
                *shape.partition(new),
            )
        )
        self.session.execute(sa.insert(level.versions).from_select(shape.names(level), rows))

    def entities(self, table: sa.FromClause, *where: Any) -> set[str]:
        """The class names of the rows of `table` (a version table, or the current
        versions) that `where` selects: TransactionChanges' entity names."""
        shape = self.shape
        if len(shape.classes) == 1:
            return {shape.name}
        disc = shape.mapper.base_mapper.polymorphic_on
        column = table.c[shape.root.versions.c[disc.name].key]
        names = set()
        for identity in self.session.scalars(sa.select(column).distinct().where(*where)):
            mapper = shape.mapper.polymorphic_map.get(identity)
            names.add(mapper.class_.__name__ if mapper is not None else shape.name)
        return names

    def deletes(self, d: Diff) -> tuple[int, set[str]]:
        """Delete versions for the current versions whose live row is gone; returns how
        many and their class names (read first: NullDelete leaves no discriminator)."""
        shape = self.shape
        deleted = 0
        gone_entities = self.entities(d.cur, *d.gone())
        for index, level in enumerate(shape.levels):
            names, values = self._delete_values(d, index)
            source: sa.FromClause = d.cur
            for i in range(1, index + 1):
                source = source.join(
                    d.tables[i], shape.levels[i].version_join(d.tables[i - 1], d.tables[i])
                )
            rows = sa.select(*values).select_from(source).where(*d.gone())
            count = rowcount(self.session, sa.insert(level.versions).from_select(names, rows))
            deleted = count if index == 0 else deleted
        return deleted, gone_entities if deleted else set()

    def _delete_values(self, d: Diff, index: int) -> tuple[list[sa.Column], list[Any]]:
        """The columns of a level's delete version and their values: the current
        version's (NullDelete: its key only), the run's transaction, operation 2, and
        every mod flag set (a flag only some classes have: for a version of those)."""
        shape, level, table = self.shape, self.shape.levels[index], d.tables[index]
        names, values = [], []
        for live, vcol in level.pairs:
            names.append(vcol)
            value = table.c[vcol.key]
            if shape.null_delete and not live.primary_key:
                value = sa.null()
            values.append(value)
        names += [level.versions.c[shape.tx], level.versions.c[shape.op]]
        values += [self.literal_tx, sa.literal(Operation.DELETE, sa.SmallInteger)]
        for flag, live, _v in level.mods:
            names.append(flag)
            if live in level.only:
                disc = shape.mapper.base_mapper.polymorphic_on
                kind = d.tables[0].c[shape.root.versions.c[disc.name].key]
                values.append(kind.in_(level.only[live]))
            else:
                values.append(sa.true())
        return names, values

    def close_superseded(self, several_open: bool) -> None:
        """Close the versions the run's new rows supersede, in every table of the model
        (and, in a joined hierarchy, in every table of the closed version's class)."""
        for level in self.shape.levels:
            if self.shape.joined:
                self._close_previous(level)
            else:
                self._close_open(level, several_open)
        if self.shape.joined:
            self._close_joined()

    def _close_previous(self, level: Level) -> None:
        """In a joined hierarchy: close each new row's key's newest version before `tx`,
        open or not, as Continuum's flush picks it (see `_close_joined`)."""
        shape, v, tx = self.shape, level.versions, self.tx
        keys = [c for _l, c in level.keys]
        new, older = v.alias("new"), v.alias("older")
        same = same_key([new.c[k.key] for k in keys], [older.c[k.key] for k in keys])
        prev = (
            sa.select(*(older.c[k.key] for k in keys), sa.func.max(older.c[shape.tx]).label("prev"))
            .select_from(older.join(new, sa.and_(new.c[shape.tx] == tx, *same)))
            .where(older.c[shape.tx] < tx)
            .group_by(*(older.c[k.key] for k in keys))
            .subquery("prev")
        )
        self.session.execute(
            sa.update(v)
            .where(*same_key(keys, [prev.c[k.key] for k in keys]), v.c[shape.tx] == prev.c.prev)
            .values({shape.end: tx})
        )

    def _close_open(self, level: Level, several_open: bool) -> None:
        """Close the newest open version of each key the run wrote a version of."""
        shape, v, tx = self.shape, level.versions, self.tx
        keys = [c for _l, c in level.keys]
        new = v.alias("new")
        where = [
            v.c[shape.end].is_(None),
            v.c[shape.tx] != tx,
            sa.exists(
                sa.select(sa.literal(1))
                .select_from(new)
                .where(new.c[shape.tx] == tx, *same_key([new.c[k.key] for k in keys], keys))
            ),
        ]
        if several_open:  # leave older open versions alone (reported, not repaired)
            newer = v.alias("newer")
            where.append(
                ~sa.exists(
                    sa.select(sa.literal(1))
                    .select_from(newer)
                    .where(
                        *same_key([newer.c[k.key] for k in keys], keys),
                        newer.c[shape.end].is_(None),
                        newer.c[shape.tx] > v.c[shape.tx],
                        newer.c[shape.tx] != tx,
                    )
                )
            )
        self.session.execute(sa.update(v).where(*where).values({shape.end: tx}))

    def _close_joined(self) -> None:
        """Continuum closes a superseded version through the version object it loads, an
        instance of the class that version was: so the version is closed in every table
        of that class, also those this unit's class lacks (a key re-created as another
        class of the hierarchy). Every closed (key, transaction) is closed everywhere."""
        shape, tx = self.shape, self.tx
        tables = [version_class(m.class_).__table__ for m in shape.joined_mappers()]
        for table in tables:
            keys = [table.c[c.name] for c in shape.table_keys(table)]
            for level in shape.levels:
                if level.versions is table:
                    continue
                lv = level.versions
                closed = (
                    sa.select(*(c for _l, c in level.keys), lv.c[shape.tx])
                    .where(lv.c[shape.end] == tx, lv.c[shape.tx] != tx)
                    .subquery("closed")
                )
                self.session.execute(
                    sa.update(table)
                    .where(
                        *same_key(keys, [closed.c[c.key] for _l, c in level.keys]),
                        table.c[shape.tx] == closed.c[shape.tx],
                        sa.or_(table.c[shape.end].is_(None), table.c[shape.end] != tx),
                    )
                    .values({shape.end: tx})
                )


def close_older_open(session: Session, shape: ModelShape) -> int:
    """Close every open version that has a newer open one, with the next version's id
    as its end (what Continuum's flush would have written), in every table of the model;
    returns how many base versions were closed."""
    total = 0
    for index, level in enumerate(shape.levels):
        v = level.versions
        keys = [c for _l, c in level.keys]
        nxt, newer = v.alias("nxt"), v.alias("newer")
        next_tx = (
            sa.select(sa.func.min(nxt.c[shape.tx]))
            .where(*same_key([nxt.c[k.key] for k in keys], keys), nxt.c[shape.tx] > v.c[shape.tx])
            .scalar_subquery()
        )
        has_newer_open = sa.exists(
            sa.select(sa.literal(1))
            .select_from(newer)
            .where(
                *same_key([newer.c[k.key] for k in keys], keys),
                newer.c[shape.end].is_(None),
                newer.c[shape.tx] > v.c[shape.tx],
            )
        )
        stmt = sa.update(v).where(v.c[shape.end].is_(None), has_newer_open)
        written = rowcount(session, stmt.values({shape.end: next_tx}))
        if index == 0:
            total = written
    return total
