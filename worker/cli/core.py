"""`initdb`, `worker` and `status`."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from cache.database import get_database
from cache.settings import load_settings, mask_url
from worker.bootstrap import bootstrap
from worker.checks import check_broker, check_database
from worker.routing import QUEUES
from worker.schema import create_tables


@click.command()
def initdb() -> None:
    """Create the tables of the configured models, Continuum's and cachework's own."""
    settings = load_settings()
    database = get_database(settings)
    check_database(database.engine)
    names = create_tables(database.engine, bootstrap(settings.models))
    click.echo(f"database ready ({len(names)} tables): {', '.join(names)}")


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker on all cachework queues; other options go to Celery."""
    from worker import app

    settings = load_settings()
    check_broker(settings)
    check_database(get_database(settings).engine)
    bootstrap(settings.models)
    args = list(ctx.args)
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in args):
        args = ["-Q", ",".join(QUEUES), *args]
    app.worker_main(["worker", *args])


def _queue_lengths(app) -> dict[str, str]:
    lengths: dict[str, str] = {}
    with app.connection_for_read(connect_timeout=3) as conn:
        for name in QUEUES:
            try:
                with conn.channel() as channel:
                    _, count, consumers = channel.queue_declare(name, passive=True)
                lengths[name] = f"{count} waiting, {consumers} consumer(s)"
            except Exception as exc:
                lengths[name] = f"unknown ({exc.__class__.__name__})"
    return lengths


@click.command()
@click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait for pings.")
def status(timeout: float) -> None:
    """Broker, database, workers answering ping, and queue lengths."""
    from worker import app

    settings = load_settings()
    console = Console()
    table = Table(title="cachework status", show_header=False)
    check_broker(settings)
    table.add_row("broker", f"{mask_url(settings.broker_url)} reachable")
    database = get_database(settings)
    check_database(database.engine)
    table.add_row("database", f"{database.engine.url.render_as_string(hide_password=True)} ok")
    replies = app.control.ping(timeout=timeout) or []
    workers = sorted(name for reply in replies for name in reply)
    table.add_row("workers", ", ".join(workers) if workers else "none answered ping")
    for name, text in _queue_lengths(app).items():
        table.add_row(f"queue {name}", text)
    console.print(table)


COMMANDS = [initdb, worker, status]
