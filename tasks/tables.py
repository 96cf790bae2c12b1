"""Tasks that read this worker process's cached tables (its runtime's registry)."""

from __future__ import annotations

import os

from celery import shared_task

from cachework.errors import ValidationError, shown
from cachework.records import to_json
from cachework.tasks import policy
from cachework.worker import routing
from cachework.worker.celery_app import require_runtime


@shared_task(
    name=routing.LOOKUP,
    bind=True,
    **policy.LOOKUP,
)
def lookup(self, table: str, key: object) -> dict | None:
    """The record of `table` with primary key `key` (coerced to its type) as a JSON object,
    or None, read through this process's cached table."""
    if not isinstance(table, str):
        raise ValidationError(f"table={shown(table)} must be a cached table name")
    registry = require_runtime(self.app).registry
    coerced = registry.coerce_key(table, key)
    return to_json(registry.table(table).get(coerced))


@shared_task(name=routing.CACHE_STATUS, bind=True)
def cache_status(self) -> dict:
    """This process's pid, invalidation cursor, per-table statistics and listener state."""
    registry = require_runtime(self.app).registry
    return {
        "pid": os.getpid(),
        "cursor": registry.cursor,
        "tables": registry.status(),
        "listener": dict(registry.listener),
    }
