"""`cachework triggers install|remove|status`: the opt-in PostgreSQL triggers that write
the outbox rows for writes the ORM never sees (raw SQL, bulk loads, other programs).

The base tables come from the declared cached tables (`CACHEWORK_CACHED_TABLES`, see
`cachework.cache.invalidation.tracking`); `max_keys` is CACHEWORK_INVALIDATION_MAX_KEYS at install
time (reinstall after changing it or the cached tables: `status` says when).

Ordinary triggers do not fire under `session_replication_role = replica` (a logical-
replication subscriber's apply worker, restores that set it): `status` says so, and fails
when new sessions start in that mode; `install --always` makes them fire there too.
"""

from __future__ import annotations

import sys

import click

from cachework.cache.invalidation import triggers as db_triggers
from cachework.cache.invalidation.dependencies import dependencies
from cachework.worker.cli.context import cli_runtime


@click.group("triggers")
def triggers() -> None:
    """PostgreSQL triggers that invalidate cached tables on any write (opt-in)."""


@triggers.command("install")
@click.option(
    "--always",
    is_flag=True,
    help="Fire under session_replication_role = replica too (a logical-replication "
    "subscriber serving cached tables of its own; keep invalidation_outbox unreplicated).",
)
def install(always: bool) -> None:
    """Create or replace the triggers on every table a cached table reads."""
    with cli_runtime() as runtime:
        deps = dependencies(runtime)
        max_keys = runtime.settings.invalidation_max_keys
        tables = db_triggers.install(runtime.database.engine, deps, max_keys, always=always)
    mode = "; in replica mode too" if always else ""
    for base in tables:
        cached = ", ".join(d.cached for d in deps if d.base == base)
        click.echo(f"installed  {base}: invalidates {cached} (one outbox row per statement{mode})")


@triggers.command("remove")
def remove() -> None:
    """Drop every cachework trigger and its function."""
    with cli_runtime() as runtime:
        tables = db_triggers.remove(runtime.database.engine)
    click.echo(f"removed    triggers on {', '.join(tables)}" if tables else "no triggers to remove")


REINSTALL = "run `cachework triggers install`"
MODES = {  # a table's triggers' mode that is not firing on ordinary writes
    "disabled": f"disabled (ALTER TABLE ... DISABLE TRIGGER): no write fires them; {REINSTALL}",
    "replica": f"fire only under session_replication_role = replica; {REINSTALL}",
    "mixed": f"some disabled or in another mode; {REINSTALL}",
}


def _state(table: db_triggers.TableTriggers) -> tuple[str, bool]:
    """What `status` says of one table, and whether it is as it should be."""
    if not table.cached:
        return f"stray (no cached table reads it: {REINSTALL})", False
    if table.installed and table.fires in MODES:
        return MODES[table.fires], False
    if table.current:
        return "installed" + (
            ", fires in replica mode too" if table.fires == "always" else ""
        ), True
    if table.installed:
        return f"outdated ({REINSTALL})", False
    return "not installed", False


@triggers.command("status")
def status() -> None:
    """Which tables have the triggers; exit 1 unless all are installed, current and
    firing, and new sessions do not start in replica mode (where ordinary ones do not)."""
    with cli_runtime() as runtime:
        deps = dependencies(runtime)
        max_keys = runtime.settings.invalidation_max_keys
        report = db_triggers.status(runtime.database.engine, deps, max_keys)
        role = db_triggers.replication_role(runtime.database.engine)
    ok = True
    for table in report:
        state, good = _state(table)
        ok = ok and good
        cached = f" -> {', '.join(table.cached)}" if table.cached else ""
        click.echo(f"{table.base}{cached}: {state}")
    ordinary = [t.base for t in report if t.installed and t.fires != "always"]
    if ordinary:
        click.echo(
            "note: ordinary triggers do not fire under session_replication_role = replica "
            "(a logical-replication subscriber's apply worker, restores that set it): "
            "announce such writes yourself, or `install --always` (see README)"
        )
    if ordinary and role == "replica":
        click.echo(
            "warning: new sessions of this database start with session_replication_role = "
            "replica (a server, database or role default): their writes fire no trigger"
        )
        ok = False
    sys.exit(0 if ok else 1)


COMMANDS = [triggers]
