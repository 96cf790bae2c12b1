"""`sync-cache` and `delete-cache`: project cache jobs in-process, or `--enqueue`d.

Arguments are checked before anything runs (an unknown project or app names it and
changes nothing), in both modes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from cachework.cache.items.sync import scope_label
from cachework.cache.requests import SyncRequest
from cachework.cache.results import SyncResult
from cachework.worker import jobs, routing
from cachework.worker.cli.context import cli_runtime
from cachework.worker.cli.enqueue import enqueue as enqueue_job
from cachework.worker.cli.params import timeout_option

if TYPE_CHECKING:
    from cachework.worker.runtime import Runtime


def _report(console: Console, summary: SyncResult) -> None:
    """The counts, each error in red, and exit status 1 if there were errors."""
    console.print(
        f"updated {summary.updated} item(s) in {summary.projects} project(s); "
        f"{len(summary.errors)} error(s)"
    )
    for error in summary.errors:
        console.print(f"  [red]{error}[/red]", highlight=False)
    if summary.errors:
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
    with cli_runtime() as runtime:
        request = jobs.sync_request(runtime, project, app_name, name and [name], user)
        if enqueue:
            kwargs = {"project": request.project, "app_name": app_name, "name": name, "user": user}
            _report(console, SyncResult.from_json(enqueue_job(routing.SYNC_CACHE, kwargs, timeout)))
            return
        summary = _sync_here(console, runtime, request)
    if summary.deferred:
        console.print(
            f"{summary.deferred} scope(s) were being rebuilt elsewhere: marked dirty there"
        )
    _report(console, summary)


def _sync_here(console: Console, runtime: Runtime, request: SyncRequest) -> SyncResult:
    """The sync in this process, with a progress bar of its scopes on a terminal."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    # Only on a terminal: elsewhere rich's transient bar still ends with an empty line.
    off = not console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=off) as progress:
        bar = progress.add_task("syncing")

        def on_scope(done: int, total: int, scope: str | None) -> None:
            progress.update(bar, description=scope_label(scope), completed=done, total=total)

        return jobs.sync(runtime, request, on_scope=on_scope)


@click.command("delete-cache")
@click.option("-p", "--project", default=None, help="Project key (default: every project).")
@click.option("-a", "--app", "app_name", default=None, help="App name (default: every app).")
@click.option("--enqueue", is_flag=True, help="Send to the workers instead of running here.")
@timeout_option(600.0)
def delete_cache(project: str | None, app_name: str | None, enqueue: bool, timeout: float) -> None:
    """Delete project cache items (no options: every item)."""
    with cli_runtime() as runtime:
        request = jobs.delete_request(runtime, project, app_name)
        if enqueue:
            kwargs = {"project": request.project, "app_name": request.app_name}
            deleted = enqueue_job(routing.DELETE_CACHE, kwargs, timeout)["deleted"]
        else:
            deleted = jobs.delete(runtime, request).deleted
    scope = "every project" if request.project is None else f"project {request.project}"
    apps = "every app" if app_name is None else f"app {app_name}"
    click.echo(f"deleted {deleted} item(s) of {scope}, {apps}")


COMMANDS = [sync_cache, delete_cache]
