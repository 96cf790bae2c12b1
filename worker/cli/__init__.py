"""The `cachework` command line.

Each job runs in-process by default; `--enqueue` sends it to the workers. Commands live in
small modules listed in `COMMAND_MODULES`; each defines click commands and a `COMMANDS`
list. Errors we raise on purpose, and click's usage errors (a bad option, argument or
command), print one line naming the bad value, never a traceback or click's usage block.
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
COMMAND_MODULES = [
    "worker.cli.core",
    "worker.cli.demo",
    "worker.cli.project_cache",
    "worker.cli.versions",
    "worker.cli.invalidate",
    "worker.cli.triggers",
    "worker.cli.health",
    "worker.cli.db",
    "worker.cli.seed",
]


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


# Commands a probe runs every few seconds, each time in a new process: loaded alone, not
# with every command module's imports (0.65 s, most of the kubelet's 1 s probe timeout).
LIGHT_COMMANDS = {"health": "worker.cli.health"}


class CacheworkGroup(click.Group):
    """The top-level group: every error a command meets on purpose (a CacheworkError, a
    bad option or argument, a service that cannot be reached) ends in one line. Command
    modules are imported when a command is looked up (all of them, but for LIGHT_COMMANDS)."""

    def load(self, module: str | None = None) -> None:
        """Add the commands of `module` (default: of every module in COMMAND_MODULES)."""
        loaded = self.__dict__.setdefault("_loaded", set())
        for name in [module] if module else COMMAND_MODULES:
            if name not in loaded:
                loaded.add(name)
                for command in importlib.import_module(name).COMMANDS:
                    self.add_command(command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            self.load(LIGHT_COMMANDS.get(cmd_name))
            if cmd_name not in self.commands:
                self.load()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load()
        return super().list_commands(ctx)

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
