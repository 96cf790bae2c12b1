"""One versioned model as a unit of the import run: its history checked (and repaired)
up front, its changes counted or probed, its versions written. The run calls its phases
in order and gets each phase's result back; the unit keeps one fact between them: whether
some key has several open versions (the compare then takes the newest as current)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework.importers.model_diff import compare
from cachework.importers.model_shape import ModelShape
from cachework.importers.model_writes import VersionWriter, close_older_open
from cachework.importers.request import ImportRequest
from cachework.importers.results import Counts, History, Needed, Written
from cachework.importers.sql import count, exists, json_key

MAX_REPORTED_KEYS = 100
KEYS_IN_WARNING = 20

Step = Callable[[], None]  # called after each statement of a phase (progress within a unit)
# The statements of each phase (a `step()` after each): what progress counts within a unit.
STEPS = {"probe": 2, "write": 3, "count": 3}


def no_step() -> None:
    """The default `step`: a run nobody listens to (or a small unit) reports nothing."""


class VersionModel:
    """A versioned class with a table of its own (with the single-table subclasses that
    share it): its live rows against the current version of each key."""

    def __init__(self, cls: type, dialect: sa.Dialect) -> None:
        self.shape = ModelShape(cls)
        self.cls = cls
        self.name = self.shape.name
        self.classes = self.shape.classes
        self.dialect = dialect
        self.several_open = False
        self._live: int | None = None

    @property
    def anchor(self) -> sa.Table:
        """The table that places this unit in foreign-key order (its deepest live table)."""
        return self.shape.levels[-1].live

    def unsupported(self) -> list[str]:
        return self.shape.unsupported()

    def planned_columns(self) -> dict[sa.Table, list[str]]:
        return self.shape.planned_columns()

    def prepare(self, session: Session, repair: bool, dry_run: bool) -> History:
        """Find out once, up front, whether some key has several open versions (validity):
        if so they are listed and reported, the newest open version counts as current,
        and with `repair` the others are closed first (in a dry run: counted)."""
        shape = self.shape
        if not shape.validity:
            return History()
        v = shape.root.versions
        keys = [c for _l, c in shape.root.keys]
        groups = (
            sa.select(*keys, sa.func.count().label("n"))
            .where(v.c[shape.end].is_(None), *shape.partition(v))
            .group_by(*keys)
            .having(sa.func.count() > 1)
        )
        if session.execute(groups.limit(1)).first() is None:
            return History()
        rows = session.execute(groups.order_by(*keys).limit(MAX_REPORTED_KEYS + 1)).all()
        inconsistent = tuple(json_key(row[:-1]) for row in rows[:MAX_REPORTED_KEYS])
        g = groups.subquery()
        found, extra = session.execute(sa.select(sa.func.count(), sa.func.sum(g.c.n - 1))).one()
        extra = int(extra)
        more = ", ..." if found > KEYS_IN_WARNING else ""
        listed = ", ".join(map(str, inconsistent[:KEYS_IN_WARNING])) + more
        action = (
            f"closing {extra} older open version(s)"
            if repair
            else "run with repair to close all but the newest"
        )
        warning = (
            f"{self.name}: {found} key(s) have several open versions (inconsistent history; "
            f"keys: {listed}); {action}"
        )
        self.several_open = True
        repaired = 0
        if repair:
            repaired = extra if dry_run else self._repair(session)
        return History((warning,), inconsistent, repaired)

    def _repair(self, session: Session) -> int:
        """Close all but the newest open version of each key; the compare then needs no
        "newest of several" any more."""
        closed = close_older_open(session, self.shape)
        self.several_open = False
        return closed

    def live_count(self, session: Session) -> int:
        """The live rows, counted once: the run reads one snapshot and writes versions
        only, so the count announced for progress is the one `unchanged` needs too."""
        if self._live is None:
            shape = self.shape
            self._live = count(session, shape.source(), *shape.partition(shape.root.live))
        return self._live

    def count(self, session: Session, step: Step = no_step) -> tuple[int, int, int, int]:
        """(created, updated, deleted, unchanged) a run of every kind would write."""
        d = compare(self.shape, self.dialect, None, self.several_open)
        kind = sa.case((d.missing, 0), else_=1)
        rows = session.execute(
            sa.select(kind, sa.func.count())
            .select_from(d.joined)
            .where(*d.changed(True, True))
            .group_by(kind)
        ).all()
        step()
        needed = {int(k): int(n) for k, n in rows}
        deleted = count(session, d.cur, *d.gone())
        step()
        live = self.live_count(session)
        step()
        created, updated = needed.get(0, 0), needed.get(1, 0)
        return created, updated, deleted, live - created - updated

    def probe(self, session: Session, step: Step = no_step) -> Needed:
        """Which writes are needed at all (each probe stops at its first row)."""
        d = compare(self.shape, self.dialect, None, self.several_open)
        changed = sa.select(sa.literal(1)).select_from(d.joined).where(*d.changed(True, True))
        gone = sa.select(sa.literal(1)).select_from(d.cur).where(*d.gone())
        any_changed = exists(session, changed)
        step()
        any_gone = exists(session, gone)
        step()
        return Needed(changed=any_changed, gone=any_gone)

    def write(
        self, session: Session, tx: int, request: ImportRequest, needed: Needed,
        step: Step = no_step,
    ) -> Written:  # fmt: skip
        """Write the kinds `request` allows (of those `needed`) in transaction `tx`."""
        d = compare(self.shape, self.dialect, tx, self.several_open)
        writer = VersionWriter(self.shape, session, tx)
        created = updated = deleted = 0
        entities: set[str] = set()
        if needed.changed:
            created, updated, entities = writer.changed(d, request.create, request.update)
        step()
        if request.delete and needed.gone:
            deleted, gone_entities = writer.deletes(d)
            entities |= gone_entities
        step()
        if self.shape.validity and created + updated + deleted:
            writer.close_superseded(self.several_open)
        step()
        counts = Counts(
            created=created,
            updated=updated,
            deleted=deleted,
            unchanged=self.live_count(session) - created - updated,
        )
        return Written(counts, frozenset(entities))
