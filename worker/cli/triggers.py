"""`cachework triggers install|remove|status`: the opt-in PostgreSQL triggers that write
the outbox rows for writes the ORM never sees (raw SQL, bulk loads, other programs).

The base tables come from the declared cached tables (`CACHEWORK_CACHED_TABLES`, see
`cache.invalidation.tracking`); `max_keys` is CACHEWORK_INVALIDATION_MAX_KEYS at install
time (reinstall after changing it or the cached tables: `status` says when).
"""

from __future__ import annotations

import sys

import click

from cache.invalidation import triggers as db_triggers
from cache.invalidation.tracking import dependencies
from worker.cli.context import cli_runtime


@click.group("triggers")
def triggers() -> None:
    """PostgreSQL triggers that invalidate cached tables on any write (opt-in)."""


@triggers.command("install")
def install() -> None:
    """Create or replace the triggers on every table a cached table reads."""
    with cli_runtime() as runtime:
        deps = dependencies(runtime)
        max_keys = runtime.settings.invalidation_max_keys
        tables = db_triggers.install(runtime.database.engine, deps, max_keys)
    for base in tables:
        cached = ", ".join(d.cached for d in deps if d.base == base)
        click.echo(f"installed  {base}: invalidates {cached} (one outbox row per statement)")


@triggers.command("remove")
def remove() -> None:
    """Drop every cachework trigger and its function."""
    with cli_runtime() as runtime:
        tables = db_triggers.remove(runtime.database.engine)
    click.echo(f"removed    triggers on {', '.join(tables)}" if tables else "no triggers to remove")


@triggers.command("status")
def status() -> None:
    """Which tables have the triggers; exit 1 unless all are installed and current."""
    with cli_runtime() as runtime:
        deps = dependencies(runtime)
        max_keys = runtime.settings.invalidation_max_keys
        report = db_triggers.status(runtime.database.engine, deps, max_keys)
    ok = True
    for table in report:
        if not table.cached:
            state = "stray (no cached table reads it: run `cachework triggers install`)"
        elif table.current:
            state = "installed"
        elif table.installed:
            state = "outdated (run `cachework triggers install`)"
        else:
            state = "not installed"
        ok = ok and table.current
        cached = f" -> {', '.join(table.cached)}" if table.cached else ""
        click.echo(f"{table.base}{cached}: {state}")
    sys.exit(0 if ok else 1)


COMMANDS = [triggers]
