"""`initdb`, `worker` and `status`."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console
from rich.table import Table

from cachework import migrate
from cachework.settings import mask_url
from cachework.worker import pools, routing
from cachework.worker.checks import check_broker, check_database
from cachework.worker.cli.context import cli_runtime
from cachework.worker.cli.params import timeout_option
from cachework.worker.schema import create_tables


@click.command()
def initdb() -> None:
    """Create the tables of the configured models and Continuum's, and create or upgrade
    cachework's own (its migrations: `cachework db`)."""
    with cli_runtime(schema=False) as runtime:
        check_database(runtime.database.engine)
        names = create_tables(runtime.database.engine, runtime.models)
        migrate.check_tables(runtime.database.engine)  # a dropped column is not "ready"
    click.echo(f"database ready ({len(names)} tables): {', '.join(names)}")
    click.echo(f"cachework schema at {migrate.head()} (head)")


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker on all cachework queues (and Celery's default queue unless
    CACHEWORK_SHARED_BROKER is on); other options go to Celery."""
    from cachework.worker import app

    settings = app.runtime.settings
    check_broker(settings)
    check_database(app.runtime.database.engine)
    app.runtime.models  # noqa: B018 - a bad model module stops here, with one line
    args = list(ctx.args)
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in args):
        args = ["-Q", ",".join(routing.queues(settings.shared_broker)), *args]
    if pools.pool_option(args) in pools.GREEN:
        # gevent and eventlet must patch the process before anything is imported, which
        # only a fresh `celery` command does (this one has imported much already).
        command = [sys.executable, "-m", "celery", "-A", "cachework.worker", "worker", *args]
        os.execv(sys.executable, command)
    app.worker_main(["worker", *args])


def _queue_lengths(app, names: tuple[str, ...]) -> dict[str, int | str]:
    """Messages waiting on each queue (a queue never declared has none), or why unknown."""
    lengths: dict[str, int | str] = {}
    with app.connection_for_read(connect_timeout=3) as conn:
        for name in names:
            try:
                with conn.channel() as channel:
                    size = getattr(channel, "_size", None)
                    if callable(size):  # Redis, filesystem: read it (an empty list is no
                        lengths[name] = int(size(name))  # queue to a passive declare)
                        continue
                    _, count, _consumers = channel.queue_declare(name, passive=True)
                lengths[name] = count
            except Exception as exc:
                if "NOT_FOUND" in str(exc) or getattr(exc, "code", None) == 404:
                    lengths[name] = 0
                else:
                    lengths[name] = f"unknown ({exc.__class__.__name__})"
    return lengths


def _consumers(app, workers: list[str], timeout: float) -> dict[str, set[str]]:
    """The queues each worker consumes (workers that did not say are left out)."""
    if not workers:
        return {}
    replies = app.control.inspect(destination=workers, timeout=timeout).active_queues() or {}
    return {name: {q["name"] for q in queues or ()} for name, queues in replies.items()}


def _advice(
    name: str, waiting: int | str, consumers: list[str], shared: bool, ours: list[str]
) -> str | None:
    """Why messages wait on a queue no cachework worker consumes, and what to do."""
    if not isinstance(waiting, int) or waiting == 0 or any(w in ours for w in consumers):
        return None
    if name != routing.DEFAULT_QUEUE:
        return (
            f"{waiting} message(s) wait on {name!r} and no cachework worker consumes it: "
            f"start one (`cachework worker`), or add {name!r} to the -Q of a running one"
        )
    if shared:
        if consumers:
            return None  # the app's own workers consume it: their tasks, not ours
        return (
            f"{waiting} message(s) wait on Celery's default queue {name!r}, which cachework "
            "workers leave to your own workers (CACHEWORK_SHARED_BROKER is on) and none of "
            "them answered; if these are cachework tasks, the sending client lacks "
            f"{routing.ROUTING_LINE}"
        )
    return (
        f"{waiting} message(s) wait on Celery's default queue {name!r}, where clients "
        "without routing send cachework tasks, and no cachework worker consumes it: start "
        f"workers without -Q (they consume {name!r} while CACHEWORK_SHARED_BROKER is off), "
        f"or route cachework tasks in the client with {routing.ROUTING_LINE}"
    )


@click.command()
@timeout_option(2.0, "Seconds to wait for pings.")
def status(timeout: float) -> None:
    """Broker, database, workers answering ping, and queue lengths.

    Exits with status 1 when no cachework worker answered ping."""
    from cachework.worker import app

    settings = app.runtime.settings
    console = Console()
    table = Table(title="cachework status", show_header=False)
    check_broker(settings)
    mode = "shared with the app's workers" if settings.shared_broker else "dedicated"
    table.add_row(
        "broker",
        f"{mask_url(settings.broker_url)} reachable ({mode}: CACHEWORK_SHARED_BROKER="
        f"{'1' if settings.shared_broker else '0'})",
    )
    database = app.runtime.database
    check_database(database.engine)
    shown_db = mask_url(database.engine.url.render_as_string(hide_password=True))
    table.add_row("database", f"{shown_db} ok")
    replies = app.control.ping(timeout=timeout) or []
    workers = sorted(name for reply in replies for name in reply)
    consumed = _consumers(app, workers, timeout)
    ours = [w for w in workers if consumed.get(w, set()) & set(routing.QUEUES)]
    others = [w for w in workers if w in consumed and w not in ours]
    table.add_row("workers", ", ".join(ours) if ours else "none answered ping")
    if others:
        table.add_row("other workers", ", ".join(others))
    if settings.shared_broker:
        default = f"{routing.DEFAULT_QUEUE!r} (Celery's default queue: left to the app's workers)"
    else:
        default = f"{routing.DEFAULT_QUEUE!r} (Celery's default queue: consumed by cachework)"
    table.add_row("default queue", default)
    advice: list[str] = []
    names = (*routing.QUEUES, routing.DEFAULT_QUEUE)
    for name, waiting in _queue_lengths(app, names).items():
        consumers = sorted(w for w, queues in consumed.items() if name in queues)
        text = f"{waiting} waiting" if isinstance(waiting, int) else waiting
        table.add_row(f"queue {name}", f"{text}, consumers: {', '.join(consumers) or 'none'}")
        note = _advice(name, waiting, consumers, settings.shared_broker, ours)
        if note:
            advice.append(note)
    console.print(table)
    for note in advice:
        console.print(f"[yellow]warning:[/yellow] {note}", soft_wrap=True)
    if not ours:
        why = "no worker answered ping" if not workers else "no cachework worker answered ping"
        console.print(f"[red]error:[/red] {why}", soft_wrap=True)
        raise SystemExit(1)


COMMANDS = [initdb, worker, status]
