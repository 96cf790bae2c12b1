"""`sync-cache` and `delete-cache`: project cache jobs in-process, or `--enqueue`d.

Arguments are checked before anything runs (an unknown project or app names it and
changes nothing), in both modes.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from cache import jobs
from cache.items.sync import scope_label
from worker import routing
from worker.checks import check_broker
from worker.cli.context import cli_runtime
from worker.cli.params import timeout_option


def _enqueue(console: Console, name: str, kwargs: dict, timeout: float) -> dict:
    from worker import app

    check_broker(app.runtime.settings)  # one line naming the broker, not a long wait
    result = app.send_task(name, kwargs=kwargs)
    console.print(f"sent {name} as task {result.id}; waiting up to {timeout:.0f}s ...")
    return result.get(timeout=timeout, interval=0.2)


def _report(console: Console, summary: dict) -> None:
    errors = summary["errors"]
    console.print(
        f"updated {summary['updated']} item(s) in {summary['projects']} project(s); "
        f"{len(errors)} error(s)"
    )
    for error in errors:
        console.print(f"  [red]{error}[/red]", highlight=False)
    if errors:
        sys.exit(1)


@click.command("sync-cache")
@click.option("-p", "--project", default=None, help="Project key (default: every project).")
@click.option("-a", "--app", "app_name", default=None, help="App name (default: every app).")
@click.option("-n", "--name", default=None, help="Item name (default: every item).")
@click.option("--user", default=None, help="Recorded on the items written.")
@click.option("--enqueue", is_flag=True, help="Send to the workers instead of running here.")
@timeout_option(3600.0)
def sync_cache(
    project: str | None,
    app_name: str | None,
    name: str | None,
    user: str | None,
    enqueue: bool,
    timeout: float,
) -> None:
    """Rebuild project cache items through the app plugins."""
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with cli_runtime() as runtime:
        if enqueue:
            project, _chosen, _names = jobs.check_sync(
                runtime, project, app_name, name and [name], user
            )
            kwargs = {"project": project, "app_name": app_name, "name": name, "user": user}
            _report(console, _enqueue(console, routing.SYNC_CACHE, kwargs, timeout))
            return
        # Only on a terminal: elsewhere rich's transient bar still ends with an empty line.
        off = not console.is_terminal
        with Progress(*columns, console=console, transient=True, disable=off) as progress:
            bar = progress.add_task("syncing")

            def on_scope(done: int, total: int, scope: str | None) -> None:
                progress.update(bar, description=scope_label(scope), completed=done, total=total)

            summary = jobs.rebuild_items(
                runtime, project, app_name, name and [name], user, on_scope=on_scope
            )
    if summary["deferred"]:
        console.print(
            f"{summary['deferred']} scope(s) were being rebuilt elsewhere: marked dirty there"
        )
    _report(console, summary)


@click.command("delete-cache")
@click.option("-p", "--project", default=None, help="Project key (default: every project).")
@click.option("-a", "--app", "app_name", default=None, help="App name (default: every app).")
@click.option("--enqueue", is_flag=True, help="Send to the workers instead of running here.")
@timeout_option(600.0)
def delete_cache(project: str | None, app_name: str | None, enqueue: bool, timeout: float) -> None:
    """Delete project cache items (no options: every item)."""
    console = Console()
    with cli_runtime() as runtime:
        project = jobs.check_delete(runtime, project, app_name)
        if enqueue:
            kwargs = {"project": project, "app_name": app_name}
            summary = _enqueue(console, routing.DELETE_CACHE, kwargs, timeout)
        else:
            summary = jobs.delete_items(runtime, project, app_name)
    scope = "every project" if project is None else f"project {project}"
    console.print(
        f"deleted {summary['deleted']} item(s) of {scope}, "
        f"{'every app' if app_name is None else 'app ' + app_name}"
    )


COMMANDS = [sync_cache, delete_cache]
