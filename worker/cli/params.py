"""Option types shared by the commands."""

from __future__ import annotations

import math
from collections.abc import Callable

import click

from cachework.errors import shown


class Seconds(click.FloatRange):
    """A time to wait, in seconds: finite and above zero. A negative or zero `--timeout`
    gave up at once after sending a job (which then ran unwatched), and `nan` never
    compared past a deadline, so a command waited forever."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value, param, ctx) -> float:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{seconds} is not a finite number of seconds", param, ctx)
        return seconds


SECONDS = Seconds()
ENQUEUE_WAIT = "Seconds to wait (--enqueue)."


def timeout_option(default: float, help: str = ENQUEUE_WAIT) -> Callable:
    """The `--timeout` option every waiting command takes: finite seconds above zero."""
    return click.option("--timeout", type=SECONDS, default=default, show_default=True, help=help)


class NulFreePath(click.Path):
    """click's Path, refusing a NUL character first: click's own checks call `os.stat`,
    which raises ValueError (a traceback) for one."""

    def convert(self, value, param, ctx):
        if "\x00" in (value if isinstance(value, str) else str(value)):
            self.fail(f"{shown(str(value))} contains a NUL character", param, ctx)
        return super().convert(value, param, ctx)
