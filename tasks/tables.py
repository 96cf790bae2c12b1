"""Tasks that read this worker process's cached tables (its runtime's registry)."""

from __future__ import annotations

import os

from celery import shared_task

from cachework.errors import TransientError, ValidationError
from cachework.records import to_json
from worker.celery_app import require_runtime
from worker.logsetup import EXPECTED_ERRORS


# Retries 1, 2, 4, 8, 8, 8 s apart: a fast PostgreSQL restart (seconds) is ridden out.
@shared_task(
    name="cachework.lookup",
    bind=True,
    autoretry_for=(TransientError,),
    retry_backoff=1,
    retry_backoff_max=8,
    retry_jitter=False,
    max_retries=6,
    throws=EXPECTED_ERRORS,
)
def lookup(self, table: str, key: object) -> dict | None:
    """The record of `table` with primary key `key` (coerced to its type) as a JSON object,
    or None, read through this process's cached table."""
    if not isinstance(table, str):
        raise ValidationError(f"table={table!r} must be a cached table name")
    registry = require_runtime(self.app).registry
    coerced = registry.coerce_key(table, key)
    return to_json(registry.table(table).get(coerced))


@shared_task(name="cachework.cache_status", bind=True)
def cache_status(self) -> dict:
    """This process's pid, invalidation cursor, per-table statistics and listener state."""
    registry = require_runtime(self.app).registry
    return {
        "pid": os.getpid(),
        "cursor": registry.cursor,
        "tables": registry.status(),
        "listener": dict(registry.listener),
    }
