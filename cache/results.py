"""Results of the project cache and invalidation jobs: one shape per job, and its JSON.

`to_json()` gives exactly what the tasks return (the public contract): a sync
`{"updated", "projects", "errors"}`, a delete `{"deleted"}`, an invalidation
`{"event_id", "rebuilt"}`. Plain values only, so a result crosses processes as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncResult:
    """Items written, projects covered and plugin errors of a sync (one scope or many).

    `deferred` counts the scopes left to a rebuild running elsewhere (marked dirty for
    it). Only an in-process sync counts them (the CLI shows the count); None leaves the
    key out of the JSON, as the tasks' contract has none."""

    updated: int = 0
    projects: int = 0
    errors: list[str] = field(default_factory=list)
    deferred: int | None = None

    def add(self, other: SyncResult) -> None:
        """Add another scope's (or sync's) counts and errors to these."""
        self.updated += other.updated
        self.projects += other.projects
        self.errors.extend(other.errors)
        if other.deferred is not None:
            self.deferred = (self.deferred or 0) + other.deferred

    @classmethod
    def combine(cls, results: Iterable[SyncResult]) -> SyncResult:
        """The summary of a fanned-out sync from its per-scope results."""
        total = cls()
        for result in results:
            total.add(result)
        return total

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SyncResult:
        """A result as a task returned it (well-formed: the caller checked it)."""
        return cls(data["updated"], data["projects"], list(data["errors"]), data.get("deferred"))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "updated": self.updated,
            "projects": self.projects,
            "errors": list(self.errors),
        }
        if self.deferred is not None:
            body["deferred"] = self.deferred
        return body


@dataclass(frozen=True)
class DeleteResult:
    """How many items a delete removed."""

    deleted: int

    def to_json(self) -> dict[str, Any]:
        return {"deleted": self.deleted}


@dataclass(frozen=True)
class InvalidationResult:
    """The id the event got in the log and how many cache items were rebuilt for it."""

    event_id: str | None
    rebuilt: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "rebuilt": self.rebuilt}
