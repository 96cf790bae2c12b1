"""A versioned many-to-many association table as a unit of the import run."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum.operation import Operation

from cachework.importers.model_unit import Step, no_step
from cachework.importers.request import ImportRequest
from cachework.importers.results import Counts, History, Needed, Written
from cachework.importers.sql import count, exists, rowcount, same_key


class AssociationVersions:
    """A versioned many-to-many association table, as Continuum's unit of work fills its
    version table: a row per association inserted (operation 0, every column) or deleted
    (operation 2, the columns the relationship's DELETE names); the newest version of a
    row is its current one, and no version is ever closed."""

    classes: tuple[type, ...] = ()  # no model class: TransactionChanges names none

    def __init__(self, table: sa.Table, versions: sa.Table, prop: Any, manager: Any) -> None:
        self.name = table.name
        self.live = table
        self.versions = versions
        self.tx = manager.options["transaction_column_name"]
        self.op = manager.options["operation_type_column_name"]
        self.keys = [(c, versions.c[c.name]) for c in table.primary_key.columns]
        self.pairs = [(c, versions.c[c.name]) for c in table.c if c.name in versions.c]
        synced = {c for pair in (*prop.synchronize_pairs, *prop.secondary_synchronize_pairs)
                  for c in pair if c.table is table}  # fmt: skip
        self.delete_columns = [(c, v) for c, v in self.pairs if c in synced]
        self._live: int | None = None

    @property
    def anchor(self) -> sa.Table:
        """The table that places this unit in foreign-key order."""
        return self.live

    def unsupported(self) -> list[str]:
        if not self.keys:
            return [
                f"association table {self.name} has no primary key (Continuum's version "
                "table for it then holds one change per transaction)"
            ]
        return []

    def prepare(self, session: Session, repair: bool, dry_run: bool) -> History:
        """Nothing to check: an association's versions are never closed."""
        return History()

    def planned_columns(self) -> dict[sa.Table, list[str]]:
        keys = [live.name for live, _v in self.keys]
        return {self.live: keys, self.versions: [*keys, self.tx, self.op]}

    def current(self, tx: int | None) -> sa.Subquery:
        """The newest version of each row (one written by this run, `tx`, never counts)."""
        v = self.versions
        newer = v.alias("newer")
        inner = same_key([newer.c[c.key] for _l, c in self.keys], [c for _l, c in self.keys])
        inner.append(newer.c[self.tx] > v.c[self.tx])
        where = []
        if tx is not None:
            inner.append(newer.c[self.tx] != tx)
            where.append(v.c[self.tx] != tx)
        where.append(~sa.exists(sa.select(sa.literal(1)).select_from(newer).where(*inner)))
        return sa.select(v).where(*where).subquery("cur")

    def _parts(self, tx: int | None) -> tuple[sa.Subquery, sa.FromClause, Any, list[Any]]:
        cur = self.current(tx)
        on = same_key([live for live, _v in self.keys], [cur.c[v.key] for _l, v in self.keys])
        joined = self.live.outerjoin(cur, sa.and_(*on))
        missing = sa.or_(cur.c[self.keys[0][1].key].is_(None), cur.c[self.op] == Operation.DELETE)
        live_row = (
            sa.select(sa.literal(1))
            .select_from(self.live)
            .where(
                *same_key([live for live, _v in self.keys], [cur.c[v.key] for _l, v in self.keys])
            )
        )
        gone = [cur.c[self.op] != Operation.DELETE, ~sa.exists(live_row)]
        return cur, joined, missing, gone

    def live_count(self, session: Session) -> int:
        """Counted once (one snapshot; the run writes versions only)."""
        if self._live is None:
            self._live = count(session, self.live)
        return self._live

    def count(self, session: Session, step: Step = no_step) -> tuple[int, int, int, int]:
        cur, joined, missing, gone = self._parts(None)
        created = count(session, joined, missing)
        step()
        deleted = count(session, cur, *gone)
        step()
        live = self.live_count(session)
        step()
        return created, 0, deleted, live - created

    def probe(self, session: Session, step: Step = no_step) -> Needed:
        cur, joined, missing, gone = self._parts(None)
        changed = exists(session, sa.select(sa.literal(1)).select_from(joined).where(missing))
        step()
        any_gone = exists(session, sa.select(sa.literal(1)).select_from(cur).where(*gone))
        step()
        return Needed(changed=changed, gone=any_gone)

    def write(
        self, session: Session, tx: int, request: ImportRequest, needed: Needed,
        step: Step = no_step,
    ) -> Written:  # fmt: skip
        """Insert versions (live rows without one) and delete versions (gone rows), as
        `request` allows. Continuum's TransactionChanges records model classes only."""
        cur, joined, missing, gone = self._parts(tx)
        literal_tx = sa.literal(tx, sa.BigInteger)
        internal = [self.versions.c[self.tx], self.versions.c[self.op]]
        created = deleted = 0
        if request.create and needed.changed:
            names = [v for _l, v in self.pairs] + internal
            rows = (
                sa.select(
                    *(live for live, _v in self.pairs),
                    literal_tx,
                    sa.literal(Operation.INSERT, sa.SmallInteger),
                )
                .select_from(joined)
                .where(missing)
            )
            created = rowcount(session, sa.insert(self.versions).from_select(names, rows))
        step()
        if request.delete and needed.gone:
            names = [v for _l, v in self.delete_columns] + internal
            rows = sa.select(
                *(cur.c[v.key] for _l, v in self.delete_columns),
                literal_tx,
                sa.literal(Operation.DELETE, sa.SmallInteger),
            ).where(*gone)
            deleted = rowcount(session, sa.insert(self.versions).from_select(names, rows))
        step()
        step()  # nothing to close: the same steps as a model's write
        counts = Counts(
            created=created, deleted=deleted, unchanged=self.live_count(session) - created
        )
        return Written(counts)
