"""The Continuum version importer: make every version table agree with its live table,
writing exactly the rows SQLAlchemy-Continuum's own unit of work would have written for
the same net changes.

A run looks at *units*, in foreign-key order:

- a `VersionModel` per versioned class that has a table of its own: its live rows (the
  join of its tables, for joined-table inheritance; the rows of its polymorphic
  identities, when its hierarchy spans several tables) against the *current* version of
  each key: the open version (validity strategy; the newest open one when some key has
  several, which is reported and, on request, repaired) or the newest version (subquery
  strategy); a current delete version (operation 2) means "no row". Single-table
  subclasses belong to the unit of the class whose table they share.
- an `AssociationVersions` per versioned many-to-many association table: Continuum
  records only inserts and deletes of association rows, reads the newest version of each
  row, and never closes one.

Changes become NEW version rows in ONE Continuum transaction, made by an explicit call
once a change is known to exist: operation 0 for a live row without a current version, 1
for a changed row, 2 for a current version whose live row is gone; a version row in every
table of the hierarchy; PropertyModTracker's `_mod` flags; under the validity strategy the
superseded versions closed; TransactionChanges' rows, one per class changed. Everything is
INSERT ... SELECT / UPDATE in the database, in the caller's transaction, which
`begin_import()` opens with the import lock and one snapshot; nothing is loaded row by row.
A plain run writes directly and counts from its writes; a dry run, a limit or a switched-off
kind counts everything first (so nothing is written when the limit would be exceeded).

The parts: `cachework.importers.request` (the checked request), `cachework.importers.plan` (the
units),
`cachework.importers.model_shape`/`model_diff`/`model_writes`/`model_unit` (one model),
`cachework.importers.association_unit`, `cachework.importers.transaction` (the Continuum
transaction),
`cachework.importers.run` (the run). This module is the public face: `import_versions` (a session
and keywords or a request) and `run_import` (the job: a database and the app's models),
with every name that used to live here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from cachework.database import Database
from cachework.errors import (
    ChangeLimitExceeded,
    NotFoundError,
    UnsupportedVersioning,
    ValidationError,
    transient_errors,
)
from cachework.importers.association_unit import AssociationVersions
from cachework.importers.bootstrap import Models
from cachework.importers.model_shape import Level
from cachework.importers.model_unit import MAX_REPORTED_KEYS, VersionModel
from cachework.importers.plan import (
    ROW_HOOKS,
    SUPPORTED_PLUGINS,
    Unit,
    is_versioned,
    plan_units,
    refuse_plugins,
    select_models,
    unsupported_plugins,
)
from cachework.importers.request import COMMENT_MAX, REMOTE_ADDR_MAX, USER_MAX, ImportRequest
from cachework.importers.results import Counts, ImportResult, Needed, switched
from cachework.importers.run import Progress, execute
from cachework.importers.sql import WITHOUT_EQUALITY, comparable, equality_type, stored_type
from cachework.importers.transaction import RunTransaction

ImportOptions = ImportRequest  # its old name: what a run may do (now with the rest it is asked)

__all__ = [
    "COMMENT_MAX",
    "MAX_REPORTED_KEYS",
    "REMOTE_ADDR_MAX",
    "ROW_HOOKS",
    "SUPPORTED_PLUGINS",
    "USER_MAX",
    "WITHOUT_EQUALITY",
    "AssociationVersions",
    "ChangeLimitExceeded",
    "Counts",
    "ImportOptions",
    "ImportRequest",
    "ImportResult",
    "Level",
    "Needed",
    "NotFoundError",
    "Progress",
    "RunTransaction",
    "Unit",
    "UnsupportedVersioning",
    "ValidationError",
    "VersionModel",
    "comparable",
    "equality_type",
    "import_versions",
    "is_versioned",
    "plan_units",
    "refuse_plugins",
    "run_import",
    "select_models",
    "stored_type",
    "switched",
    "unsupported_plugins",
]


def import_versions(
    session: Session,
    model_classes: Sequence[type],
    request: ImportRequest | None = None,
    *,
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
    **arguments: Any,
) -> ImportResult:
    """Bring the version tables of `model_classes` (or the `names`d ones) in line with
    their live tables, in `session`'s transaction, which must not have begun yet.

    What to do is `request`, or else the keyword arguments of `ImportRequest.parse`
    (`names` standing for its `models`). The caller commits (or, on any error, rolls
    back): the run is all-or-nothing only together with that. Bad input raises
    `ValidationError`/`NotFoundError` before anything is written, an unsupported
    Continuum set-up `UnsupportedVersioning`; `LockedError` when another import is running.
    """
    if request is None:
        request = ImportRequest.parse(models=names, **arguments)
    elif names is not None or arguments:
        raise TypeError("import_versions: pass a request or keyword arguments, not both")
    return execute(session, model_classes, request, progress)


def run_import(
    database: Database,
    models: Models,
    request: ImportRequest | Mapping[str, Any],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The version import job over the app's versioned `models` in one session of
    `database`, committed on success. `request` is a parsed `ImportRequest`, or a task's
    keyword arguments as they came, which `import_versions` parses once before anything
    runs. Returns the result as the task's JSON; an unreachable database is a
    TransientError."""
    if isinstance(request, ImportRequest):
        parsed, arguments = request, {}
    else:
        parsed, arguments = None, dict(request)
    names = arguments.pop("models", None)
    with transient_errors("database"), database.session() as session:
        # Through the module's `import_versions`, the one entry every caller shares.
        run = import_versions(
            session, models.versioned, request=parsed, names=names, progress=progress, **arguments
        )
        return run.as_dict()
