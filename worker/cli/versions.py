"""`cachework import-versions`: run the version import here, or `--enqueue` it to a worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from celery.states import READY_STATES
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from cachework.importers.progress import RunProgress, Throttle, format_seconds
from cachework.importers.request import ImportRequest
from cachework.importers.versions import run_import
from cachework.worker import routing
from cachework.worker.cli.context import cli_runtime
from cachework.worker.cli.params import timeout_option

COLUMNS = ("created", "updated", "deleted", "unchanged", "skipped", "repaired")
SHORT = {"created": "c", "updated": "u", "deleted": "d", "unchanged": "same"}
PROGRESS_LINE_EVERY = 2.0  # seconds between progress lines off a terminal (at most)
POLL_EVERY = 0.2  # seconds between reads of an enqueued import's state


class ModelProgress:
    """A rich progress row per model (rows checked of rows to check, percentage) and one
    for the whole run (with its ETA), fed by the importer's events (in-process) or by the
    task's PROGRESS meta (`--enqueue`: `show(meta)`). Off a terminal, one progress line at
    most every PROGRESS_LINE_EVERY seconds on stderr instead."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            TextColumn("{task.fields[rows]:>21}"),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            disable=not console.is_terminal,
        )
        self.run = RunProgress()
        self.rows: dict[str, Any] = {}
        self.overall: Any = None
        self.line_now = Throttle(PROGRESS_LINE_EVERY)
        self.printed = ""

    def __enter__(self) -> ModelProgress:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        self.run(event)
        self._render()

    def show(self, meta: dict[str, Any]) -> None:
        """Render a task's PROGRESS meta (the whole run so far)."""
        if isinstance(meta.get("models"), dict):
            self.run = RunProgress.from_snapshot(meta)
            self._render()

    def finish(self, result: dict[str, Any]) -> None:
        """Every model of a finished run as written (a poll may end before its last
        PROGRESS state was seen)."""
        for name, counts in result.get("models", {}).items():
            model = self.run.models.get(name)
            if model is None or model.get("stage") != "done":
                self.run({"model": name, "stage": "done", **counts})
        self._render()

    def _render(self) -> None:
        run = self.run
        if self.progress.disable:
            line = run.line()
            if run.models and line != self.printed and (self.line_now() or run.finished):
                click.echo(line, err=True)
                self.printed = line
            return
        for name, model in run.models.items():
            rows = model.get("rows")
            if name not in self.rows:
                self.rows[name] = self.progress.add_task(name, total=rows, rows="", status="")
            counts = " ".join(f"{SHORT[k]}={model[k]}" for k in COLUMNS[:4] if k in model)
            status = {"checking": "checking", "counted": f"counted {counts}"}.get(
                model["stage"], f"written {counts}" if model["stage"] == "done" else ""
            )
            if model["stage"] == "checking" and len(run.models) == 1:
                status += f", {_eta(run)}"  # no "all models" row to show it on
            self.progress.update(
                self.rows[name],
                total=rows,
                completed=model.get("done") or 0,
                rows=_rows(model.get("done") or 0, rows),
                status=status,
            )
        if len(run.models) > 1 or self.overall is not None:
            if self.overall is None:
                self.overall = self.progress.add_task("all models", total=None, rows="", status="")
            self.progress.update(
                self.overall,
                total=run.rows,
                completed=run.done,
                rows=_rows(run.done, run.rows),
                status=_eta(run) if not run.finished and run.rows is not None else "",
            )


def _eta(run: RunProgress) -> str:
    """The run's ETA, or that it is still being estimated (see cachework.importers.progress)."""
    eta = run.eta
    return f"ETA {format_seconds(eta)}" if eta is not None else "ETA estimating"


def _rows(done: int, rows: int | None) -> str:
    return f"{done:,}/{rows:,} rows" if rows is not None else f"{done:,} rows"


def summary_table(result: dict[str, Any]) -> Table:
    title = "version import" + (" (dry run: nothing written)" if result["dry_run"] else "")
    table = Table(title=title)
    table.add_column("model")
    for name in COLUMNS:
        table.add_column(name, justify="right")
    for model, counts in result["models"].items():
        table.add_row(model, *(str(counts.get(name, 0)) for name in COLUMNS))
    return table


def _enqueue(
    request: ImportRequest, timeout: float, on_event: Callable[[dict], None], sent: list[str]
) -> dict:
    from cachework.worker import app

    async_result = app.send_task(routing.IMPORT_VERSIONS, kwargs=request.as_kwargs())
    sent.append(async_result.id)
    deadline = time.monotonic() + timeout
    while True:
        state, info = _state_and_info(async_result)
        if state in READY_STATES:
            break
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"no result from task {async_result.id} after {timeout:.0f}s (still queued or "
                "running; is a worker consuming the 'versions' queue?)"
            )
        if state == "PROGRESS" and isinstance(info, dict):
            on_event(info)  # the whole run so far
        time.sleep(POLL_EVERY)
    return async_result.get(propagate=True, timeout=5)


def _state_and_info(async_result: Any) -> tuple[str | None, Any]:
    """The task's state and its meta from ONE read of the result backend. Read apart
    (`.state`, then `.info`), the task can finish in between: a PROGRESS state paired
    with the final result, which is no progress snapshot (KeyError: 'stage')."""
    meta = async_result.backend.get_task_meta(async_result.id)
    return meta.get("status"), meta.get("result")


@click.command("import-versions")
@click.option("--model", "models", multiple=True, help="A versioned model name (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would change; write nothing.")
@click.option("--user", help="Recorded on the Continuum transaction.")
@click.option("--comment", help="Recorded in the Continuum transaction's meta.")
@click.option("--remote-addr", help="Recorded on the Continuum transaction.")
@click.option("--no-create", is_flag=True, help="Do not write versions for new rows.")
@click.option("--no-update", is_flag=True, help="Do not write versions for changed rows.")
@click.option("--no-delete", is_flag=True, help="Do not write versions for deleted rows.")
@click.option(
    "--max-changes",
    type=click.IntRange(min=0),
    help="Abort, writing nothing, if the run would write more changes than this.",
)
@click.option("--repair", is_flag=True, help="Close all but the newest of several open versions.")
@click.option("--enqueue", is_flag=True, help="Send the task to the workers and wait.")
@timeout_option(3600.0)
def import_versions_command(
    models: tuple[str, ...],
    dry_run: bool,
    user: str | None,
    comment: str | None,
    remote_addr: str | None,
    no_create: bool,
    no_update: bool,
    no_delete: bool,
    max_changes: int | None,
    repair: bool,
    enqueue: bool,
    timeout: float,
) -> None:
    """Bring every version table in line with its live table (one Continuum transaction)."""
    request = ImportRequest.parse(
        models=list(models) or None,
        user=user,
        remote_addr=remote_addr,
        comment=comment,
        dry_run=dry_run,
        create=not no_create,
        update=not no_update,
        delete=not no_delete,
        max_changes=max_changes,
        repair=repair,
    )  # one request, checked here, for both paths
    console = Console()
    _print_result(console, _run(console, request, enqueue, timeout))


def _run(console: Console, request: ImportRequest, enqueue: bool, timeout: float) -> dict:
    """The import's result, run here or by the workers (`enqueue`), with its progress
    shown; Ctrl-C is one line saying what became of the run, and exit status 130."""
    sent: list[str] = []
    try:
        with ModelProgress(console) as progress:
            if enqueue:
                result = _enqueue(request, timeout, progress.show, sent)
                progress.finish(result)
                return result
            with cli_runtime() as runtime:
                return run_import(runtime.database, runtime.models, request, progress)
    except KeyboardInterrupt:
        if sent:
            message = (
                f"interrupted: stopped waiting; task {sent[0]} goes on in the worker "
                "(its result: the task's state in the result backend)"
            )
        else:
            message = "interrupted: the run was rolled back; nothing was written"
        click.secho(message, fg="yellow", err=True)
        raise SystemExit(130) from None


def _print_result(console: Console, result: dict) -> None:
    console.print(summary_table(result))
    txn = result["transaction_id"]
    console.print(
        f"transaction {txn}" if txn is not None else "no Continuum transaction (nothing written)"
    )
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")


COMMANDS = [import_versions_command]
