"""The `cachework` command line.

Each job runs in-process by default; `--enqueue` sends it to the workers. Commands live in
small modules; each defines click commands and a `COMMANDS` list, and `COMMANDS` here
names each command's module and its line in `cachework --help`. A command imports only
its own module when it runs, and `--help` imports none (the modules import SQLAlchemy,
Celery, Alembic, Continuum: a second a process, and the tests start dozens). Errors we
raise on purpose, and click's usage errors (a bad option, argument or command), print one
line naming the bad value, never a traceback or click's usage block.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

import click

from cachework.errors import (
    MESSAGE_MAX,
    CacheworkError,
    PermanentError,
    cut,
    first_line,
    is_transient,
)
from cachework.settings import mask_url

# click 8.2+: a group called without a command raises this to print its help; it stays so.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

# Each top-level command: the module that defines it (imported when the command runs),
# and its whole short help (`cachework --help` cuts it as click would). A unit test
# (tests/unit/test_cli_lazy.py) checks both against the commands themselves.
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("cachework.worker.cli.db", "Migrations of cachework's own tables (never the app's)."),
    "delete-cache": (
        "cachework.worker.cli.project_cache",
        "Delete project cache items (no options: every item).",
    ),
    "demo": (
        "cachework.worker.cli.demo",
        "Seed the embedded database, start a real worker and run every job through it.",
    ),
    "health": (
        "cachework.worker.cli.health",
        "Exit 0 with `ok`, or 1 with one line saying what is wrong.",
    ),
    "import-versions": (
        "cachework.worker.cli.versions",
        "Bring every version table in line with its live table (one Continuum transaction).",
    ),
    "initdb": (
        "cachework.worker.cli.core",
        "Create the tables of the configured models and Continuum's, and create or upgrade "
        "cachework's own (its migrations: `cachework db`).",
    ),
    "invalidate": (
        "cachework.worker.cli.invalidate",
        "Invalidate KEYs (primary keys; none = the whole table) of TABLE everywhere.",
    ),
    "seed": (
        "cachework.worker.cli.seed",
        "Fill the example app (projects, categories, products) for a trial.",
    ),
    "status": (
        "cachework.worker.cli.core",
        "Broker, database, workers answering ping, and queue lengths.",
    ),
    "sync-cache": (
        "cachework.worker.cli.project_cache",
        "Rebuild project cache items through the app plugins.",
    ),
    "triggers": (
        "cachework.worker.cli.triggers",
        "PostgreSQL triggers that invalidate cached tables on any write (opt-in).",
    ),
    "worker": (
        "cachework.worker.cli.core",
        "Start a Celery worker on all cachework queues (and Celery's default queue unless "
        "CACHEWORK_SHARED_BROKER is on); other options go to Celery.",
    ),
}
COMMAND_MODULES = sorted({module for module, _summary in COMMANDS.values()})


def _first_line(exc: BaseException) -> str:
    return mask_url(first_line(getattr(exc, "orig", None) or exc, named=False)) or (
        exc.__class__.__name__
    )


def describe_failure(exc: BaseException) -> str | None:
    """One line naming the cause, for what a command meets when a service it needs is
    down or slow (no traceback); None for anything else (a bug: its traceback is due)."""
    import redis
    import sqlalchemy as sa
    from celery.exceptions import TimeoutError as ResultTimeout
    from kombu.exceptions import OperationalError as BrokerUnreachable

    if isinstance(exc, ResultTimeout):
        return (
            "no result from the workers in time: is a cachework worker running and "
            "consuming its queues? (`cachework status` shows them)"
        )
    if isinstance(exc, BrokerUnreachable):
        return f"the broker (CACHEWORK_BROKER_URL) cannot be reached: {_first_line(exc)}"
    if isinstance(exc, sa.exc.SQLAlchemyError) and is_transient(exc):
        return f"the database (CACHEWORK_DATABASE_URL) cannot be reached: {_first_line(exc)}"
    if isinstance(exc, redis.RedisError) and is_transient(exc):
        return f"Redis (CACHEWORK_REDIS_URL) cannot be reached: {_first_line(exc)}"
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return (
            f"cannot use {exc.filename}: {exc.strerror or exc.__class__.__name__} "
            "(is CACHEWORK_DATA_DIR a folder this user can write?)"
        )
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"a service cannot be reached: {exc.__class__.__name__}: {_first_line(exc)}"
    return None


def one_line(text: str, limit: int = MESSAGE_MAX) -> str:
    """`text` on one line, cut to `limit` characters (a 1 MB bad value is not echoed)."""
    return cut(" ".join(part.strip() for part in text.splitlines() if part.strip()), limit)


def _exit_with_click_error(exc: click.ClickException) -> NoReturn:
    """One line `error: ...` on stderr and the error's exit status (2 for a usage error),
    instead of click's Usage/Try/Error block: the message names the option and the bad
    value, and the pointer to the command's help replaces its usage lines."""
    pointer = ""
    if isinstance(exc, click.UsageError):
        path = exc.ctx.command_path if exc.ctx is not None else "cachework"
        pointer = f" (see {path} --help)"
    message = one_line(exc.format_message(), MESSAGE_MAX - len(pointer)) + pointer  # cut whole
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(exc.exit_code)


class CacheworkGroup(click.Group):
    """The top-level group: every error a command meets on purpose (a CacheworkError, a
    bad option or argument, a service that cannot be reached) ends in one line. A
    command's module is imported when the command is looked up; the help lists the
    commands from `COMMANDS` without importing any."""

    def load(self, module: str | None = None) -> None:
        """Add the commands of `module` (default: of every module in COMMAND_MODULES)."""
        loaded = self.__dict__.setdefault("_loaded", set())
        for name in [module] if module else COMMAND_MODULES:
            if name not in loaded:
                loaded.add(name)
                for command in importlib.import_module(name).COMMANDS:
                    self.add_command(command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.load(COMMANDS[cmd_name][0])
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's "Commands:" section, each line from `COMMANDS` (no module imported)
        and cut as click cuts a command's own help."""
        listed = {name: click.Command(name, help=text) for name, (_, text) in COMMANDS.items()}
        listed.update(self.commands)  # the loaded ones (and any added by hand) as they are
        shown = sorted(name for name, command in listed.items() if not command.hidden)
        if shown:
            limit = formatter.width - 6 - max(len(name) for name in shown)
            with formatter.section("Commands"):
                formatter.write_dl([(n, listed[n].get_short_help_str(limit)) for n in shown])

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        """The group's own options and arguments (`cachework --bogus`) are parsed here,
        before `invoke`; an empty command line still prints the help."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except NO_ARGS_IS_HELP:
            raise
        except click.ClickException as exc:
            _exit_with_click_error(exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CacheworkError as exc:
            click.secho(f"error: {one_line(str(exc))}", fg="red", err=True)
            sys.exit(2 if isinstance(exc, PermanentError) else 1)
        except NO_ARGS_IS_HELP:  # `cachework db`: the group's help, as click prints it
            raise
        except click.ClickException as exc:  # a command's (or a subgroup's) bad usage
            _exit_with_click_error(exc)
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            line = describe_failure(exc)
            if line is None:
                raise
            click.secho(f"error: {line}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=CacheworkGroup)
def main() -> None:
    """cachework: a Celery worker for version imports, project caches and cached tables."""
