"""Running cachework's blocking work off an event loop: a cached table's load or refresh,
a read the source must answer, a log append, a barrier's wait.

In the threads of a started runtime's own pool (`Runtime.aio_threads`) when the caller
has one, so a refresh held by a slow query never takes a thread from the loop's default
executor, which the app's own `asyncio.to_thread` calls share; else in that default
executor.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


def pool_of(owner: object) -> Executor | None:
    """`owner`'s pool for this work (a runtime's `aio_threads`), or None: the default."""
    return getattr(owner, "aio_threads", None)


async def off_loop(executor: Executor | None, fn: Callable[..., T], /, *args: Any) -> T:
    """`fn(*args)` in `executor` (None: the loop's default), awaited; context variables
    go along, as with `asyncio.to_thread`."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)
