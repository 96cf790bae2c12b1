"""`cachework.import_versions`: the version import as a Celery task (the rules: importers)."""

from __future__ import annotations

import logging

from celery import shared_task

from cachework.importers.progress import RunProgress, Throttle
from cachework.importers.versions import run_import
from cachework.settings import Settings
from cachework.tasks import policy
from cachework.worker import routing
from cachework.worker.celery_app import require_runtime

log = logging.getLogger(__name__)
PROGRESS_LOG_EVERY = 5.0  # seconds between the worker's progress lines (at most)


def _results_share_sqlite(settings: Settings, database_url: str) -> bool:
    """True when task results live in the SQLite file being imported: the import holds
    its write lock until commit, so a PROGRESS write would wait on the import itself."""
    return database_url.startswith("sqlite") and settings.result_backend == "db+" + database_url


@shared_task(
    bind=True,
    name=routing.IMPORT_VERSIONS,
    **policy.IMPORT,
    cut_lists=("warnings",),  # a result too large to store keeps its first warnings
)
def import_versions(
    self,
    models: list[str] | None = None,
    user: str | None = None,
    remote_addr: str | None = None,
    comment: str | None = None,
    dry_run: bool = False,
    create: bool = True,
    update: bool = True,
    delete: bool = True,
    max_changes: int | None = None,
    repair: bool = False,
) -> dict:
    """Bring every (or each named) version table in line with its live table.

    Progress goes to the task state (`PROGRESS`, meta: `RunProgress.snapshot()`: percent,
    rows done of total, eta_seconds, the model at work, every model so far) and, run by a
    worker, to `task-progress` events with the same fields (what Flower shows). Transient
    database errors and a held import lock are retried with backoff; bad input is not.
    """
    # The arguments as they came: the import parses them once, into its typed request.
    arguments = {
        "models": models,
        "user": user,
        "remote_addr": remote_addr,
        "comment": comment,
        "dry_run": dry_run,
        "create": create,
        "update": update,
        "delete": delete,
        "max_changes": max_changes,
        "repair": repair,
    }
    runtime = require_runtime(self.app)
    settings, database = runtime.settings, runtime.database
    report = bool(self.request.id) and not _results_share_sqlite(settings, database.url)
    run, log_now = RunProgress(), Throttle(PROGRESS_LOG_EVERY)
    events = bool(self.request.hostname)  # run by a worker: it sends task events

    def progress(event: dict) -> None:
        run(event)
        meta = run.snapshot()
        if report:  # the whole run so far: a client polling it misses no model
            self.update_state(state="PROGRESS", meta=meta)
        if events:  # Flower shows the task in state PROGRESS with these fields
            self.send_event("task-progress", **meta)
        if log_now() or run.finished:
            log.info("%s", run.line())

    return run_import(database, runtime.models, arguments, progress)
