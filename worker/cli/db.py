"""`cachework db current|upgrade|history`: the migrations of cachework's own tables.

Only cachework's tables (cache items, invalidation log and outbox, locks) are migrated;
the app's tables stay the app's. `cachework initdb` does what `db upgrade` does and also
creates the app's missing tables.
"""

from __future__ import annotations

import click

from cachework import migrate
from cachework.worker.checks import check_database
from cachework.worker.cli.context import cli_runtime


@click.group()
def db() -> None:
    """Migrations of cachework's own tables (never the app's)."""


@db.command()
def current() -> None:
    """The revision of the database's cachework tables, and whether it is the head.

    Exits with status 1 when the schema is not at head."""
    with cli_runtime(schema=False) as runtime:
        check_database(runtime.database.engine)
        s = migrate.state(runtime.database.engine)
        found = migrate.differences(runtime.database.engine) if s.current else []
    if found:
        click.echo(f"{s.revision} (head), but the tables differ: {'; '.join(found)}")
        raise SystemExit(1)
    if s.fresh:
        click.echo(f"no cachework tables (head {s.head}): run `{migrate.INIT_COMMAND}`")
    elif s.revision is None:
        click.echo(
            f"unversioned (tables made before migrations; head {s.head}): "
            f"run `{migrate.UPGRADE_COMMAND}`"
        )
    elif s.current:
        click.echo(f"{s.revision} (head)")
    elif s.known:
        click.echo(f"{s.revision} (behind head {s.head}): run `{migrate.UPGRADE_COMMAND}`")
    else:
        click.echo(f"{s.revision} (unknown to this cachework, whose head is {s.head})")
    if not s.current:
        raise SystemExit(1)


@db.command()
def upgrade() -> None:
    """Create cachework's tables, or upgrade them to the head revision."""
    with cli_runtime(schema=False) as runtime:
        check_database(runtime.database.engine)
        before, after = migrate.upgrade(runtime.database.engine)
        migrate.check_tables(runtime.database.engine)
    if before == after:
        click.echo(f"cachework schema already at head {after}")
    else:
        click.echo(f"cachework schema upgraded from {before or 'nothing'} to {after}")


@db.command()
def history() -> None:
    """The revisions, newest first."""
    for line in migrate.history():
        click.echo(line)


COMMANDS = [db]
