"""`health`: liveness and readiness of the deployment, for probes and scripts."""

from __future__ import annotations

import sys

import click

from cache.settings import load_settings
from worker.cli.params import timeout_option


@click.command()
@click.option(
    "--liveness", "mode", flag_value="liveness", help="Only the database, Redis and the broker."
)
@click.option(
    "--readiness",
    "mode",
    flag_value="readiness",
    default=True,
    help="Also a cachework worker answers and no worker child's invalidation listener is "
    "cut off longer than CACHEWORK_LISTENER_STALE_AFTER (default).",
)
@timeout_option(3.0, "Seconds to wait for each check.")
def health(mode: str, timeout: float) -> None:
    """Exit 0 with `ok`, or 1 with one line saying what is wrong."""
    from worker.health import liveness, readiness

    settings = load_settings()
    if mode == "liveness":
        problems = liveness(settings, timeout)
    else:
        from worker.celery_app import create_app

        app = create_app(settings)
        try:
            problems = readiness(settings, app, timeout)
        finally:
            app.close()
    if problems:
        click.echo(f"unhealthy ({mode}): {'; '.join(problems)}", err=True)
        sys.exit(1)
    click.echo(f"ok ({mode})")


COMMANDS = [health]
