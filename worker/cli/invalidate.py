"""`cachework invalidate TABLE [KEY]...`: publish an invalidation (every worker process's
cached tables hear it) and rebuild the project cache items it names.

Runs in-process by default, `--enqueue` sends `cachework.process_invalidation` to the
workers. Arguments are checked first in both modes: a bad table or key names it and
publishes nothing.
"""

from __future__ import annotations

import click

from cache import jobs
from cache.invalidation import validate_event
from cachework.records import json_value
from worker import routing
from worker.checks import check_broker
from worker.cli.context import cli_runtime
from worker.cli.params import timeout_option


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
        event = validate_event(
            table,
            list(keys) or None,
            project,
            app_name,
            list(names) or None,
            known_tables=runtime.known_tables(),
            max_keys=runtime.settings.invalidation_max_keys,
        )
        kwargs = {
            "table": event.table,
            "keys": [json_value(k) for k in event.keys] if event.keys is not None else None,
            "project": event.project,
            "app_name": event.app_name,
            "names": list(event.names) if event.names is not None else None,
        }
        if enqueue:
            from worker import app

            check_broker(app.runtime.settings)  # one line naming the broker
            sent = app.send_task(routing.PROCESS_INVALIDATION, kwargs=kwargs)
            click.echo(f"sent cachework.process_invalidation as task {sent.id}; waiting ...")
            result = sent.get(timeout=timeout, interval=0.1)
        else:
            result = jobs.invalidate(runtime, **kwargs)
    what = "every record" if event.keys is None else f"{len(event.keys)} key(s)"
    click.echo(
        f"published invalidation {result['event_id']} for {event.table} ({what}); "
        f"rebuilt {result['rebuilt']} cache item(s)"
    )


COMMANDS = [invalidate]
