"""The prefork pool with a shutdown that cannot hang on a lock a killed child took with it.

With a transport that has no event loop (the embedded `filesystem://` broker), Celery's
prefork pool is billiard's threaded `Pool`. Its children share two queues, each guarded by
process-shared locks (semaphores): the inqueue's read lock, taken to read a task, and the
outqueue's write lock, taken to send back an ack, a result or a child's exit. SIGTERM to
the whole process group (systemd's default KillMode=control-group, `kill -TERM -<pgid>`)
reaches every child at once. billiard's handler in a child raises SystemExit so that the
`with lock:` blocks release their locks, but billiard's Lock acquires in a Python-level
`__enter__`: a child that was waiting for a lock gets it the moment another, exiting,
child releases it, and its own pending SIGTERM then raises inside `__enter__`, before the
`with` block exists. That child exits holding the lock for good. The main process's warm
shutdown then waits forever: in billiard's exit finalizer (`_help_stuff_finish` takes the
inqueue's read lock with no timeout), or in `Pool.join` (the task handler's sentinel waits
for the outqueue's write lock). Measured here: 3 runs of 5 (2 children) and every run
(4 children) hung; the others took 5-6 s.

`TaskPool` is Celery's prefork pool with two changes to its `BlockingPool`:
- Its queues use the C semaphore under billiard's wrapper. It acquires in C, so the
  `with` block is set up before any signal handler can run, and no lock is left held.
  This is the fix: 8 runs of 8 exited, in 2.4-2.7 s, with 4 children.
- `_help_stuff_finish` waits at most LOCK_WAIT seconds for the inqueue's read lock, then
  drains the queue without it. This is a safety net: the pool is being torn down, and no
  child reads the queue again.

`use_bounded_prefork(worker)` puts `TaskPool` in place of Celery's prefork pool. The
worker's lifecycle calls it at `worker_init` (worker/lifecycle.py), which runs before the
pool class is resolved. Other pools are left as they are.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from billiard.pool import Pool as BilliardPool
from celery.concurrency import get_implementation
from celery.concurrency import prefork as celery_prefork

log = logging.getLogger(__name__)
LOCK_WAIT = 1.0  # seconds


class BlockingPool(BilliardPool):
    """billiard's threaded pool: its queues' locks cannot leak, and its final inqueue
    drain cannot wait forever."""

    def _setup_queues(self) -> None:
        super()._setup_queues()
        # billiard's Lock acquires in a Python-level __enter__: a child whose SIGTERM
        # handler (billiard's, raising SystemExit) runs right after the acquire, before
        # the `with` block is set up, dies holding the lock. With SIGTERM to every process
        # at once that is common: a child waiting for the lock gets it the moment the
        # holder exits, and its own SIGTERM is pending. The C lock underneath acquires in
        # C: the `with` block is set up before any signal handler can run. Children share
        # these objects through fork; a spawned child gets billiard's pickled wrapper.
        if self._ctx.get_start_method() != "fork":
            return
        for queue in (self._inqueue, self._outqueue):
            for name in ("_rlock", "_wlock"):
                wrapper = getattr(queue, name, None)
                semlock = getattr(wrapper, "_semlock", None)
                if semlock is not None and hasattr(semlock, "__enter__"):
                    setattr(queue, f"{name}_wrapper", wrapper)  # keeps its after-fork hook
                    setattr(queue, name, semlock)

    @staticmethod
    def _help_stuff_finish(inqueue: Any, task_handler: Any, _pool: Any) -> None:
        # The task handler may be blocked putting a task on a full inqueue: read what is
        # left so it can see its sentinel, as billiard does, but without waiting forever
        # for a lock a dead child may hold.
        taken = inqueue._rlock.acquire(timeout=LOCK_WAIT)
        if not taken:
            log.warning(
                "prefork pool: the inqueue's read lock is still held after %.0f s "
                "(a child killed holding it?); shutting down without it",
                LOCK_WAIT,
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
