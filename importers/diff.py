"""A keyed, set-based diff between a source and a target, computed inside the database.

A `KeyedDiff` names a source (e.g. a live table), a target holding at most one "current"
row per key (e.g. the latest version of each row), the key columns, the compared columns
and an optional "absent" predicate (a target row that stands for "no row", such as a
delete version). From that it builds SQL only: counts by kind, and the SELECTs of rows to
create/update and of target rows whose source row is gone, ready to feed INSERT ... SELECT.
Nothing is ever loaded row by row, so memory does not grow with the tables.

`run_diffs()` drives several diffs as one job, reporting progress through a callback. A
dry run, a max-changes limit or a switched-off kind counts everything first (so the run
can stop before anything is written), then applies each diff that has changes; a plain
run lets each target write directly and count from what it wrote, which saves a pass.
The caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cache.errors import PermanentError, ValidationError

Progress = Callable[[dict[str, Any]], None]
CREATE, UPDATE = 0, 1


class ChangeLimitExceeded(PermanentError):
    """The run would write more changes than `max_changes` allows; nothing was written."""


@dataclass(frozen=True)
class DiffOptions:
    """What a run may do. Switched-off kinds are counted as `skipped`, never written."""

    create: bool = True
    update: bool = True
    delete: bool = True
    dry_run: bool = False
    max_changes: int | None = None

    def __post_init__(self) -> None:
        for name in ("create", "update", "delete", "dry_run"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValidationError(f"{name}={value!r} must be true or false")
        limit = self.max_changes
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValidationError(f"max_changes={limit!r} must be a whole number or None")
        if limit is not None and limit < 0:
            raise ValidationError(f"max_changes={limit!r} must be 0 or more (or None: no limit)")

    @property
    def writes_everything(self) -> bool:
        """A real run of every kind with no limit: nothing needs counting before writing."""
        return (
            self.create
            and self.update
            and self.delete
            and not self.dry_run
            and self.max_changes is None
        )


@dataclass
class Counts:
    """Per-diff counts. `created/updated/deleted` are what the run writes (or would write)."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0

    @property
    def changes(self) -> int:
        return self.created + self.updated + self.deleted

    def as_dict(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class KeyedDiff:
    """Source rows against current target rows, matched by `keys`, compared on `columns`.

    `target` must hold at most one row per key. `absent(target)` (optional) marks target
    rows that mean "this key has no row" (a delete version): a source row matched only by
    such a row is a create, and such a target row never counts as deleted.
    """

    source: sa.FromClause
    target: sa.FromClause
    keys: tuple[str, ...]
    columns: tuple[str, ...]
    absent: Callable[[sa.FromClause], sa.ColumnElement[bool]] | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValidationError("a keyed diff needs at least one key column")

    # --- predicates -------------------------------------------------------------------

    def matches(self, target: sa.FromClause | None = None) -> sa.ColumnElement[bool]:
        target = self.target if target is None else target
        return sa.and_(*(self.source.c[k] == target.c[k] for k in self.keys))

    def _missing(self) -> sa.ColumnElement[bool]:
        """The source row has no current target row (or only an "absent" one)."""
        no_row = self.target.c[self.keys[0]].is_(None)
        if self.absent is None:
            return no_row
        return sa.or_(no_row, self.absent(self.target))

    def _present(self, target: sa.FromClause | None = None) -> sa.ColumnElement[bool]:
        target = self.target if target is None else target
        present = target.c[self.keys[0]].is_not(None)
        if self.absent is None:
            return present
        return sa.and_(present, sa.not_(self.absent(target)))

    def _differs(self) -> sa.ColumnElement[bool]:
        """Null-safe inequality on any compared column (IS DISTINCT FROM / IS NOT)."""
        if not self.columns:
            return sa.false()
        return sa.or_(*(self.source.c[c].is_distinct_from(self.target.c[c]) for c in self.columns))

    def _joined(self) -> sa.FromClause:
        return self.source.outerjoin(self.target, self.matches())

    # --- statements ----------------------------------------------------------------------

    def count_statement(self) -> sa.Select:
        """One row: (created, updated, unchanged) needed, and the joined row count."""
        missing = self._missing()
        changed = sa.and_(sa.not_(missing), self._differs())

        def total(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        return sa.select(
            total(missing).label("created"),
            total(changed).label("updated"),
            total(sa.and_(sa.not_(missing), sa.not_(self._differs()))).label("unchanged"),
            sa.func.count().label("rows"),  # > source rows: some key has several targets
        ).select_from(self._joined())

    def gone_condition(self, target: sa.FromClause | None = None) -> sa.ColumnElement[bool]:
        """A present target row whose source row no longer exists."""
        target = self.target if target is None else target
        source_row = sa.select(sa.literal(1)).where(
            *(self.source.c[k] == target.c[k] for k in self.keys)
        )
        return sa.and_(self._present(target), ~sa.exists(source_row))

    def deleted_count_statement(self) -> sa.Select:
        return sa.select(sa.func.count()).select_from(self.target).where(self.gone_condition())

    def changed_rows(
        self,
        create: bool,
        update: bool,
        columns: Sequence[str],
        extra: Sequence[sa.ColumnElement[Any]] = (),
        kind: str = "kind",
    ) -> sa.Select:
        """Source rows to write: the named source columns, `extra`, then `kind`
        (0 create, 1 update), for use in INSERT ... SELECT."""
        missing = self._missing()
        wanted = []
        if create:
            wanted.append(missing)
        if update:
            wanted.append(sa.and_(sa.not_(missing), self._differs()))
        if not wanted:
            wanted.append(sa.false())
        return (
            sa.select(
                *(self.source.c[c] for c in columns),
                *extra,
                sa.case((missing, CREATE), else_=UPDATE).label(kind),
            )
            .select_from(self._joined())
            .where(sa.or_(*wanted))
        )

    def gone_rows(
        self, columns: Sequence[str], extra: Sequence[sa.ColumnElement[Any]] = ()
    ) -> sa.Select:
        """Current target rows whose source row is gone: the named target columns + `extra`."""
        return sa.select(*(self.target.c[c] for c in columns), *extra).where(self.gone_condition())

    def count(self, session: Session, options: DiffOptions) -> Counts:
        """Two aggregate queries; the switches decide what is written vs skipped."""
        created, updated, unchanged, _rows = session.execute(self.count_statement()).one()
        deleted = session.execute(self.deleted_count_statement()).scalar_one()
        return switched(created, updated, deleted, unchanged, options)


def switched(
    created: int, updated: int, deleted: int, unchanged: int, options: DiffOptions
) -> Counts:
    """Counts of what is needed, split by the switches into written and skipped."""
    counts = Counts(unchanged=int(unchanged))
    for kind, needed, allowed in (
        ("created", int(created), options.create),
        ("updated", int(updated), options.update),
        ("deleted", int(deleted), options.delete),
    ):
        if allowed:
            setattr(counts, kind, needed)
        else:
            counts.skipped += needed
    return counts


class DiffTarget(Protocol):
    """One unit of a run (e.g. one model): how to count and apply its diff."""

    name: str
    warnings: list[str]  # filled by count()

    def count(self, session: Session, options: DiffOptions) -> Counts: ...

    def apply(self, session: Session, counts: Counts, options: DiffOptions) -> None:
        """Write the changes counted (called only when not a dry run)."""

    def write(self, session: Session) -> Counts | None:
        """Write every change (all kinds on, no limit) and return the counts, taken from
        the writes where possible; None, having written nothing, when this target must
        be counted first (then `count` and `apply` run)."""


@dataclass
class DiffResult:
    models: dict[str, Counts] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return sum(c.changes for c in self.models.values())


def run_diffs(
    session: Session,
    targets: Sequence[DiffTarget],
    options: DiffOptions,
    progress: Progress | None = None,
) -> DiffResult:
    """Count every target, enforce the limit, then apply (unless dry run).

    With a dry run, a limit or a switched-off kind, counting happens for all targets
    before the first write, so a limit that would be exceeded raises `ChangeLimitExceeded`
    with nothing written, and a dry run reports exactly the counts a real run would write.
    Otherwise each target writes directly (`write_directly`).
    """
    notify = progress or (lambda _event: None)
    if options.writes_everything:
        return write_directly(session, targets, notify)
    result = DiffResult()
    total = len(targets)
    for index, target in enumerate(targets, 1):
        notify({"model": target.name, "stage": "checking", "index": index, "total": total})
        counts = target.count(session, options)
        result.warnings.extend(target.warnings)
        result.models[target.name] = counts
        notify(
            {
                "model": target.name,
                "stage": "counted",
                "index": index,
                "total": total,
                **counts.as_dict(),
            }
        )
    if options.max_changes is not None and result.changes > options.max_changes:
        detail = ", ".join(f"{n}: {c.changes}" for n, c in result.models.items() if c.changes)
        raise ChangeLimitExceeded(
            f"the import would write {result.changes} changes ({detail}), more than "
            f"max_changes={options.max_changes}; nothing was written"
        )
    if options.dry_run:
        return result
    for index, target in enumerate(targets, 1):
        counts = result.models[target.name]
        target.apply(session, counts, options)
        notify(
            {
                "model": target.name,
                "stage": "done",
                "index": index,
                "total": total,
                **counts.as_dict(),
            }
        )
    return result


def write_directly(session: Session, targets: Sequence[DiffTarget], notify: Progress) -> DiffResult:
    """A plain run: each target writes its changes and counts them from the writes; a
    target that must be counted first (`write` returns None) is counted, then applied."""
    result = DiffResult()
    total = len(targets)
    everything = DiffOptions()
    for index, target in enumerate(targets, 1):
        step = {"model": target.name, "index": index, "total": total}
        notify({**step, "stage": "checking"})
        counts = target.write(session)
        if counts is None:
            counts = target.count(session, everything)
            notify({**step, "stage": "counted", **counts.as_dict()})
            target.apply(session, counts, everything)
        result.warnings.extend(target.warnings)
        result.models[target.name] = counts
        notify({**step, "stage": "done", **counts.as_dict()})
    return result
