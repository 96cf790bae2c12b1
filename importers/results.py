"""What the phases of a version import return: per-unit counts, which writes a unit
needs, what checking a unit's history found, and the run's result (the task's JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cachework.importers.request import ImportRequest


@dataclass
class Counts:
    """Per-unit counts. `created/updated/deleted` are what the run writes (or would write)."""

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


def switched(
    created: int, updated: int, deleted: int, unchanged: int, request: ImportRequest
) -> Counts:
    """Counts of what is needed, split by the request's switches into written and skipped."""
    counts = Counts(unchanged=int(unchanged))
    for kind, needed, allowed in (
        ("created", int(created), request.create),
        ("updated", int(updated), request.update),
        ("deleted", int(deleted), request.delete),
    ):
        if allowed:
            setattr(counts, kind, needed)
        else:
            counts.skipped += needed
    return counts


@dataclass(frozen=True)
class Needed:
    """Which writes a unit needs: versions for new or changed rows, for gone rows."""

    changed: bool
    gone: bool

    def __bool__(self) -> bool:
        return self.changed or self.gone

    @classmethod
    def of(cls, counts: Counts) -> Needed:
        """The writes counted `counts` call for."""
        return cls(changed=counts.created + counts.updated > 0, gone=counts.deleted > 0)


@dataclass(frozen=True)
class Written:
    """A unit's writes: their counts and the class names they changed (the entity names
    of Continuum's TransactionChanges)."""

    counts: Counts
    entities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class History:
    """What checking a unit's version history found before the compare: warnings, keys
    with several open versions (at most MAX_REPORTED_KEYS) and the versions closed (or,
    in a dry run, that would be) by a repair."""

    warnings: tuple[str, ...] = ()
    inconsistent: tuple[Any, ...] = ()
    repaired: int = 0


@dataclass
class ImportResult:
    """What a run did (or, for a dry run, would do); `as_dict()` is the task's JSON."""

    transaction_id: int | None
    dry_run: bool
    models: dict[str, Counts]
    warnings: list[str]
    repaired: dict[str, int] = field(default_factory=dict)
    inconsistent: dict[str, list[Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "dry_run": self.dry_run,
            "models": {
                name: {**counts.as_dict(), "repaired": self.repaired.get(name, 0)}
                for name, counts in self.models.items()
            },
            "warnings": list(self.warnings),
            "inconsistent": {name: list(keys) for name, keys in self.inconsistent.items()},
        }
