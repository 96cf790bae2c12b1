"""The `cachework` command line.

Each job runs in-process by default; `--enqueue` sends it to the workers. Commands live in
small modules listed in `COMMAND_MODULES`; each defines click commands and a `COMMANDS`
list. Errors we raise on purpose print one line naming the bad value, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from cache.errors import CacheworkError, PermanentError, is_transient
from cache.settings import mask_url

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
    text = str(getattr(exc, "orig", None) or exc).strip()
    return mask_url(text.splitlines()[0][:300]) if text else exc.__class__.__name__


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


class CacheworkGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CacheworkError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2 if isinstance(exc, PermanentError) else 1)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
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


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).COMMANDS:
        main.add_command(_command)
