"""`cachework.process_invalidation`: validate an invalidation, publish it to the log (every
worker process's cached tables hear it), and rebuild the project cache items it names."""

from __future__ import annotations

import os

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from cachework.cache.invalidation.events import id_key
from cachework.tasks import policy
from cachework.worker import jobs, routing
from cachework.worker.celery_app import require_runtime


@shared_task(
    name=routing.PROCESS_INVALIDATION,
    bind=True,
    **policy.CACHE_JOB,
    argument_limit=None,  # keys: up to CACHEWORK_INVALIDATION_MAX_KEYS, checked by the job
)
def process_invalidation(
    self,
    table: str,
    keys: list | None = None,
    project: str | None = None,
    app_name: str | None = None,
    names: list[str] | None = None,
) -> dict:
    """Publish an invalidation and rebuild the items it names: `{"event_id", "rebuilt"}`."""
    runtime = require_runtime(self.app)
    request = jobs.invalidation_request(runtime, table, keys, project, app_name, names)
    return jobs.process_invalidation(runtime, request, (SoftTimeLimitExceeded,)).to_json()


@shared_task(name=routing.INVALIDATION_PROBE, bind=True)
def invalidation_probe(self, since: str = "0") -> dict:
    """This process's pid, cursor and recent (event id, applied at) pairs after `since`:
    what tests and the benchmark use to see every child's listener."""
    tracker = require_runtime(self.app).tracker
    recent = [] if tracker is None else list(tracker.recent)
    floor = id_key(since)
    return {
        "pid": os.getpid(),
        "cursor": tracker.cursor if tracker is not None else None,
        "applied": [[i, t] for i, t, _published in recent if id_key(i) > floor],
        "listener": dict(tracker.stats) if tracker is not None else {},
    }
