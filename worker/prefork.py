"""The prefork pool with a shutdown that cannot hang on a lock a killed child took with it.

With a transport that has no event loop (the embedded `filesystem://` broker), Celery's
prefork pool is billiard's threaded `Pool`. Its children poll the shared inqueue without a
lock, then take the inqueue's read lock (a semaphore shared by the processes) to read: when
two children see one task, the one that loses the race holds the lock while it waits in
`recv()` for the next one. SIGTERM to the whole process group (systemd's default
KillMode=control-group, `kill -TERM -<pgid>`, a terminal's Ctrl+C) kills that child with
the lock held, and the semaphore stays taken forever. The main process's warm shutdown
itself finishes, but at exit billiard's finalizer (`Pool._terminate_pool`) calls
`_help_stuff_finish`, which acquires that lock with no timeout: the worker never exits
(3 runs of 5 here; the others took 5-6 s).

`TaskPool` is Celery's prefork pool with that one step bounded: the lock is waited for at
most LOCK_WAIT seconds, after which the inqueue is drained without it (at that point no
child will read it again: the pool is being torn down). `use_bounded_prefork(worker)`
swaps it in for Celery's prefork pool (connected to `worker_init`, before the pool class
is resolved); other pools are left alone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from billiard.pool import Pool as BilliardPool
from celery import signals
from celery.concurrency import get_implementation
from celery.concurrency import prefork as celery_prefork

log = logging.getLogger(__name__)
LOCK_WAIT = 1.0  # seconds: a live child holding the lock gives it up on its next read


class BlockingPool(BilliardPool):
    """billiard's threaded pool whose final inqueue drain cannot wait forever."""

    @staticmethod
    def _help_stuff_finish(inqueue: Any, task_handler: Any, _pool: Any) -> None:
        # The task handler may be blocked putting a task on a full inqueue: read what is
        # left so it can see its sentinel, as billiard does, but without waiting forever
        # for a lock a dead child may hold.
        taken = inqueue._rlock.acquire(timeout=LOCK_WAIT)
        if not taken:
            log.warning(
                "prefork pool: the inqueue's lock is held by a child that is gone "
                "(SIGTERM to the process group?); shutting down without it"
            )
        while task_handler.is_alive() and inqueue._reader.poll():
            inqueue._reader.recv()
            time.sleep(0)


class TaskPool(celery_prefork.TaskPool):
    """Celery's prefork pool with the bounded shutdown (for non-event-loop transports)."""

    BlockingPool = BlockingPool


def use_bounded_prefork(worker: Any) -> None:
    """Give `worker` (a WorkController, before its pool class is resolved) TaskPool in
    place of Celery's prefork pool; any other pool class is left as it is."""
    pool_cls = getattr(worker, "pool_cls", None)
    if pool_cls is None:
        return
    try:
        resolved = get_implementation(pool_cls)
    except Exception:  # an unknown pool name: Celery reports it itself, right after
        return
    if resolved is celery_prefork.TaskPool:
        worker.pool_cls = TaskPool


@signals.worker_init.connect
def _worker_init(sender: Any = None, **_kwargs: Any) -> None:
    if getattr(getattr(sender, "app", None), "runtime", None) is not None:  # ours only
        use_bounded_prefork(sender)
