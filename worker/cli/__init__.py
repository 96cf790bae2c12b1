"""The `cachework` command line.

Each job runs in-process by default; `--enqueue` sends it to the workers. Commands live in
small modules listed in `COMMAND_MODULES`; each defines click commands and a `COMMANDS`
list. Errors we raise on purpose print one line naming the bad value, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from cache.errors import CacheworkError, PermanentError

COMMAND_MODULES = [
    "worker.cli.core",
    "worker.cli.demo",
    "worker.cli.project_cache",
    "worker.cli.versions",
    "worker.cli.invalidate",
    "worker.cli.triggers",
]


class CacheworkGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CacheworkError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2 if isinstance(exc, PermanentError) else 1)


@click.group(cls=CacheworkGroup)
def main() -> None:
    """cachework: a Celery worker for version imports, project caches and cached tables."""


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).COMMANDS:
        main.add_command(_command)
