"""Project cache tasks: `cachework.sync_cache`, `cachework.delete_cache`, the per-scope
subtask `cachework.sync_project_cache` a sync of all projects fans out over the `cache`
queue (so several worker nodes share it), combined by `cachework.sync_cache_summary`, and
`cachework.rebuild_changed`, the data-driven rebuild the change follower sends.

Each task parses its arguments into a request once (`cachework.worker.jobs.sync_request`...), runs
the job of `cachework.worker.jobs` with it and the app's runtime and time limit, and returns the
result's JSON.
"""

from __future__ import annotations

from celery import chord, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from cachework.errors import ValidationError, shown
from cachework.tasks import policy
from cachework.worker import jobs, routing
from cachework.worker.celery_app import require_runtime

RETRY = policy.CACHE_JOB
ERRORS = ("errors",)  # a result too large to store keeps its first errors (worker/task_base)
ABORT_ON = (SoftTimeLimitExceeded,)


def delivered_again(request) -> bool:
    """The broker delivered this message before (its visibility timeout passed, or the
    consumer's connection was lost): the first delivery may still be running."""
    return bool((request.delivery_info or {}).get("redelivered"))


@shared_task(name=routing.SYNC_PROJECT_CACHE, bind=True, cut_lists=ERRORS, **RETRY)
def sync_project_cache(
    self,
    project: str | None = None,
    app_name: str | None = None,
    name: str | None = None,
    user: str | None = None,
    missing_ok: bool = False,
) -> dict:
    """One scope of a sync: `project`, or the site-wide items when it is None."""
    if not isinstance(missing_ok, bool):  # "no" is truthy: a typo must not change the rule
        raise ValidationError(f"missing_ok={shown(missing_ok)} must be true or false")
    # A project deleted since the sync listed it (missing_ok) is nothing to do.
    return jobs.sync_scope(
        require_runtime(self.app),
        project,
        app_name,
        name,
        user,
        missing_ok=missing_ok,
        abort_on=ABORT_ON,
        see_through=delivered_again(self.request),
    )


@shared_task(name=routing.REBUILD_CHANGED, bind=True, cut_lists=ERRORS, **RETRY)
def rebuild_changed(
    self,
    project: str | None = None,
    app_name: str | None = None,
    names: list[str] | None = None,
) -> dict:
    """A data-driven rebuild the change follower sends (worker/change_follower.py): the
    items of one scope whose declared reads changed. Returns `{"updated", "projects",
    "errors"}`."""
    return jobs.rebuild_changed(
        require_runtime(self.app),
        project,
        app_name,
        names,
        abort_on=ABORT_ON,
        see_through=delivered_again(self.request),
    )


@shared_task(name=routing.SYNC_CACHE_SUMMARY, item_arguments=("results",), cut_lists=ERRORS)
def sync_cache_summary(results: list[dict]) -> dict:
    """Combine the per-scope results of a fanned-out sync. Each result is at most what a
    task stores (worker/task_base.py: RESULT_MAX), so a larger one is refused."""
    check_summaries(results)
    return jobs.combine(results)


def check_summaries(results: object) -> None:
    """A ValidationError naming the first malformed per-scope result: the chord passes
    well-formed ones, but anyone can send this task (a KeyError would log a traceback)."""
    if not isinstance(results, list):
        raise ValidationError(f"results={shown(results)} must be a list of scope results")
    for index, result in enumerate(results):
        ok = (
            isinstance(result, dict)
            and all(
                isinstance(result.get(k), int) and not isinstance(result.get(k), bool)
                for k in ("updated", "projects")
            )
            and isinstance(result.get("errors"), list)
        )
        if not ok:
            raise ValidationError(
                f"results[{index}]={shown(result)} must be a scope result "
                "({'updated': int, 'projects': int, 'errors': [...]})"
            )


@shared_task(name=routing.SYNC_CACHE, bind=True, cut_lists=ERRORS, **RETRY)
def sync_cache(
    self,
    project: str | None = None,
    app_name: str | None = None,
    name: str | None = None,
    user: str | None = None,
) -> dict:
    """Rebuild cache items: one project here, or all projects fanned out over the queue.

    Returns `{"updated", "projects", "errors"}`; for all projects the task is replaced by
    a chord of one `cachework.sync_project_cache` per project (plus the site-wide items),
    whose combined summary becomes this task's result.
    """
    runtime = require_runtime(self.app)
    request = jobs.sync_request(runtime, project, app_name, jobs.item_names(name), user)
    if request.project is not None:
        see_through = delivered_again(self.request)
        return jobs.sync_one(runtime, request, ABORT_ON, see_through).to_json()
    header = [
        sync_project_cache.si(scope, request.app_name, name, request.user, missing_ok=True)
        for scope in jobs.scopes_of(runtime, None)
    ]
    raise self.replace(chord(header, sync_cache_summary.s()))


@shared_task(name=routing.DELETE_CACHE, bind=True, **RETRY)
def delete_cache(self, project: str | None = None, app_name: str | None = None) -> dict:
    """Delete cache items: of one project and/or app, or every item (no arguments)."""
    runtime = require_runtime(self.app)
    return jobs.delete(runtime, jobs.delete_request(runtime, project, app_name)).to_json()
