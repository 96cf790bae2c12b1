"""`cachework invalidate TABLE [KEY]...`: publish an invalidation (every worker process's
cached tables hear it) and rebuild the project cache items it names.

Runs in-process by default, `--enqueue` sends `cachework.process_invalidation` to the
workers. Arguments are checked first in both modes: a bad table or key names it and
publishes nothing.
"""

from __future__ import annotations

import click

from cachework.cache.results import InvalidationResult
from cachework.worker import jobs, routing
from cachework.worker.cli.context import cli_runtime
from cachework.worker.cli.enqueue import enqueue as enqueue_job
from cachework.worker.cli.params import timeout_option


@click.command("invalidate")
@click.argument("table")
@click.argument("keys", nargs=-1)
@click.option("-p", "--project", default=None, help="Project key whose cache items to rebuild.")
@click.option("-a", "--app", "app_name", default=None, help="App whose cache items to rebuild.")
@click.option("-n", "--name", "names", multiple=True, help="Item name to rebuild (repeatable).")
@click.option("--enqueue", is_flag=True, help="Send to the workers instead of running here.")
@timeout_option(600.0)
def invalidate(
    table: str,
    keys: tuple[str, ...],
    project: str | None,
    app_name: str | None,
    names: tuple[str, ...],
    enqueue: bool,
    timeout: float,
) -> None:
    """Invalidate KEYs (primary keys; none = the whole table) of TABLE everywhere."""
    with cli_runtime() as runtime:
        request = jobs.invalidation_request(
            runtime, table, list(keys) or None, project, app_name, list(names) or None
        )
        if enqueue:
            sent = enqueue_job(routing.PROCESS_INVALIDATION, request.task_kwargs(), timeout)
            result = InvalidationResult(sent["event_id"], sent["rebuilt"])
        else:
            result = jobs.process_invalidation(runtime, request)
    event = request.event
    what = "every record" if event.keys is None else f"{len(event.keys)} key(s)"
    click.echo(
        f"published invalidation {result.event_id} for {event.table} ({what}); "
        f"rebuilt {result.rebuilt} cache item(s)"
    )


COMMANDS = [invalidate]
