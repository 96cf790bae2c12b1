"""cachework's own threads, for the blocking work an event loop must never wait on: a
cached table's load or refresh, a read the source must answer, a log append, a barrier.

A pool of its own (not the loop's default executor, which the app's `to_thread` and
FastAPI's sync routes may need): a refresh held by a slow query occupies one of these,
never the loop. Forgotten in a forked child, which makes its own on first use.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
MAX_THREADS = 8

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """This process's pool (made on first use)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="cachework-aio")
        return _executor


async def off_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in cachework's pool, awaited (context variables go along,
    as with `asyncio.to_thread`)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor(), call)


def shutdown(wait: bool = True) -> None:
    """End the pool's threads (an app's shutdown; `runtime_lifespan` does it). A later
    call of `off_loop` makes a new pool."""
    global _executor
    with _lock:
        pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=wait)


def _forget() -> None:
    global _executor, _lock
    _lock = threading.Lock()
    _executor = None  # the parent's threads do not exist here


os.register_at_fork(after_in_child=_forget)
