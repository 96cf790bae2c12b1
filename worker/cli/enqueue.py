"""`--enqueue`: send a job to the workers by task name and wait for its result.

Written once for every command that can run its job in the workers (sync-cache,
delete-cache, invalidate, import-versions): the broker is checked first (one line naming
it, not a long wait), the task's state is polled with one read of the result backend per
poll (state and meta read apart can pair a PROGRESS state with the final result), a wait
past the timeout and an interrupt each end in one line naming the task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from celery.states import READY_STATES

from cachework import worker
from cachework.worker import routing
from cachework.worker.checks import check_broker

POLL_EVERY = 0.2  # seconds between reads of an enqueued task's state
FINAL_READ = 5.0  # seconds to fetch the result of a task already seen ready


def enqueue(
    name: str,
    kwargs: dict[str, Any],
    timeout: float,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    announce: bool = True,
    check: bool = True,
) -> Any:
    """Send task `name` with `kwargs` and return its result, waiting up to `timeout`
    seconds. The task's own error is raised as the worker raised it (a CacheworkError
    ends in the CLI's one error line). `on_progress` gets each PROGRESS meta (a dict);
    `announce` prints the task id sent; `check` connects to the broker first."""
    app = worker.app
    if check:
        check_broker(app.runtime.settings)
    sent = app.send_task(name, kwargs=kwargs)
    if announce:
        click.echo(f"sent {name} as task {sent.id}; waiting up to {timeout:.0f}s ...")
    try:
        _wait(sent, name, timeout, on_progress)
        return sent.get(propagate=True, timeout=FINAL_READ)
    except KeyboardInterrupt:
        click.secho(
            f"interrupted: stopped waiting; task {sent.id} goes on in the worker "
            "(its result: the task's state in the result backend)",
            fg="yellow",
            err=True,
        )
        raise SystemExit(130) from None


def _wait(
    sent: Any,
    name: str,
    timeout: float,
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Poll until the task is ready; a ClickException naming it past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        state, info = state_and_info(sent)
        if state in READY_STATES:
            return
        if time.monotonic() > deadline:
            queue = routing.ROUTES.get(name, routing.FALLBACK_QUEUE)
            raise click.ClickException(
                f"no result from the workers in time: task {sent.id} ({name}) is still "
                f"queued or running after {timeout:g}s; is a cachework worker consuming "
                f"the {queue!r} queue? (`cachework status` shows them)"
            )
        if state == "PROGRESS" and isinstance(info, dict) and on_progress is not None:
            on_progress(info)
        time.sleep(POLL_EVERY)


def state_and_info(sent: Any) -> tuple[str | None, Any]:
    """The task's state and its meta from ONE read of the result backend. Read apart
    (`.state`, then `.info`), the task can finish in between: a PROGRESS state paired
    with the final result, which is no progress snapshot."""
    meta = sent.backend.get_task_meta(sent.id)
    return meta.get("status"), meta.get("result")
