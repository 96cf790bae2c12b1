"""A version import run: the plan's units, in the caller's transaction (opened with the
import lock and one snapshot), their history checked, their changes written in ONE
Continuum transaction, and the run's counts.

A plain run writes directly and counts from its writes; a dry run, a limit or a
switched-off kind counts everything first (so nothing is written when the limit would be
exceeded).

Progress (when listened to): the rows each unit will check, then per unit "checking" and
"counted"/"done"; a unit of STEP_ROWS live rows or more also reports after each of its
statements (`part` of `parts`: the probes and writes of a plain run, the counts of a
counting one), so a large model's progress moves while it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum.utils import get_versioning_manager

from cachework.errors import ChangeLimitExceeded
from cachework.importers.locking import begin_import
from cachework.importers.model_unit import STEPS, Step, VersionModel, no_step
from cachework.importers.plan import Unit, is_versioned, plan_units, select_models
from cachework.importers.request import ImportRequest
from cachework.importers.results import Counts, History, ImportResult, Needed, switched
from cachework.importers.statistics import refresh_stale_statistics
from cachework.importers.transaction import RunTransaction

Progress = Callable[[dict[str, Any]], None]

# A unit of at least this many live rows reports after each of its statements (events
# with `part` of `parts`): its few set-based statements can take minutes, and without
# them its progress would stand still until they all finished.
STEP_ROWS = 5_000


def execute(
    session: Session,
    model_classes: Sequence[type],
    request: ImportRequest,
    progress: Progress | None = None,
) -> ImportResult:
    """Run the import `request` asks for over `model_classes` in `session`'s transaction,
    which must not have begun yet; the caller commits or rolls back. Progress events (see
    cachework.importers.progress) go to `progress`."""
    versioned = [c for c in model_classes if is_versioned(c)]
    if not versioned:
        select_models(model_classes, request.models)  # names given: the same errors as ever
        return ImportResult(None, request.dry_run, {}, ["no versioned models configured"])
    dialect = session.get_bind(mapper=versioned[0]).dialect
    units = plan_units(model_classes, request.models, dialect)
    first = next((u.cls for u in units if isinstance(u, VersionModel)), versioned[0])
    transaction = RunTransaction(session, get_versioning_manager(first), request)
    begin_import(session, mapper=first)
    transaction.check()
    refresh_stale_statistics(session, _planned_columns(units))
    history = {u.name: u.prepare(session, request.repair, request.dry_run) for u in units}
    run = ImportRun(session, units, request, transaction, progress)
    run.announce()
    models, entities = run.write_directly() if request.writes_everything else run.count_first()
    transaction.record_changes(entities)  # none without a transaction
    if transaction.id is not None or any(h.repaired for h in history.values()):
        session.flush()
    return _result(transaction.id, request.dry_run, models, history)


def _planned_columns(units: Sequence[Unit]) -> dict[sa.Table, list[str]]:
    """Each table once, with the columns the units' plans use (for ANALYZE)."""
    planned: dict[sa.Table, list[str]] = {}
    for unit in units:
        for table, names in unit.planned_columns().items():
            planned.setdefault(table, []).extend(names)
    return planned


def _result(
    transaction_id: int | None, dry_run: bool, models: dict[str, Counts],
    history: dict[str, History],
) -> ImportResult:  # fmt: skip
    return ImportResult(
        transaction_id=transaction_id,
        dry_run=dry_run,
        models=models,
        warnings=[w for h in history.values() for w in h.warnings],
        repaired={name: h.repaired for name, h in history.items()},
        inconsistent={name: list(h.inconsistent) for name, h in history.items() if h.inconsistent},
    )


class ImportRun:
    """The compare-and-write phase of a run, unit by unit, with its progress events."""

    def __init__(
        self, session: Session, units: Sequence[Unit], request: ImportRequest,
        transaction: RunTransaction, progress: Progress | None,
    ) -> None:  # fmt: skip
        self.session = session
        self.units = units
        self.request = request
        self.transaction = transaction
        self.listened = progress is not None
        self.notify: Progress = progress or (lambda _event: None)
        self.rows: dict[str, int] = {}

    def announce(self) -> None:
        """The rows each model will check, for progress bars and ETA (when listened to)."""
        if self.listened:
            self.rows = {u.name: u.live_count(self.session) for u in self.units}
            self.notify({"stage": "planned", "rows": dict(self.rows)})

    def _steps(self, index: int, unit: Unit, parts: int) -> Step:
        """A callback for the unit's statements: after each but the last, an event saying
        how many of its `parts` are done (for a large unit, when listened to)."""
        if self.rows.get(unit.name, 0) < STEP_ROWS:
            return no_step
        done = 0

        def step() -> None:
            nonlocal done
            done += 1
            if done < parts:
                event = {"model": unit.name, "index": index, "total": len(self.units)}
                self.notify({**event, "stage": "checking", "part": done, "parts": parts})

        return step

    def _step(self, index: int, unit: Unit, stage: str, counts: Counts | None = None) -> None:
        event = {"model": unit.name, "index": index, "total": len(self.units), "stage": stage}
        self.notify({**event, **(counts.as_dict() if counts is not None else {})})

    def write_directly(self) -> tuple[dict[str, Counts], set[str]]:
        """Probe each unit and write what it needs: counts come from the writes."""
        models: dict[str, Counts] = {}
        entities: set[str] = set()
        for index, unit in enumerate(self.units, 1):
            self._step(index, unit, "checking")
            step = self._steps(index, unit, STEPS["probe"] + STEPS["write"])
            needed = unit.probe(self.session, step)
            if needed:
                tx = self.transaction.begin()
                written = unit.write(self.session, tx, self.request, needed, step)
                counts, entities = written.counts, entities | written.entities
            else:
                counts = Counts(unchanged=unit.live_count(self.session))
            models[unit.name] = counts
            self._step(index, unit, "done", counts)
        return models, entities

    def count_first(self) -> tuple[dict[str, Counts], set[str]]:
        """Count every unit, refuse a run over the limit, then (unless a dry run) write
        exactly what was counted."""
        models: dict[str, Counts] = {}
        for index, unit in enumerate(self.units, 1):
            self._step(index, unit, "checking")
            step = self._steps(index, unit, STEPS["count"])
            models[unit.name] = switched(*unit.count(self.session, step), self.request)
            self._step(index, unit, "counted", models[unit.name])
        self._check_limit(models)
        entities: set[str] = set()
        if self.request.dry_run:
            return models, entities
        for index, unit in enumerate(self.units, 1):
            counted = models[unit.name]
            if counted.changes:
                entities |= self._write_counted(unit, counted)
            self._step(index, unit, "done", counted)
        return models, entities

    def _check_limit(self, models: dict[str, Counts]) -> None:
        limit = self.request.max_changes
        changes = sum(c.changes for c in models.values())
        if limit is not None and changes > limit:
            detail = ", ".join(f"{n}: {c.changes}" for n, c in models.items() if c.changes)
            raise ChangeLimitExceeded(
                f"the import would write {changes} changes ({detail}), more than "
                f"max_changes={limit}; nothing was written"
            )

    def _write_counted(self, unit: Unit, counted: Counts) -> frozenset[str]:
        tx = self.transaction.begin()
        written = unit.write(self.session, tx, self.request, Needed.of(counted))
        wrote = written.counts
        if (wrote.created, wrote.updated, wrote.deleted) != (
            counted.created, counted.updated, counted.deleted,
        ):  # fmt: skip  # one snapshot makes this impossible
            raise RuntimeError(f"{unit.name}: counted {counted.as_dict()}, wrote {wrote.as_dict()}")
        return written.entities
