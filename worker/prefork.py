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

Its shutdown also skips two waits of billiard's that cost an idle worker 2 s of its 3 s
stop (solo stops in 1.2 s), and nothing else:
- A child leaving because the pool closes (it read the pool's end-of-work sentinel) sends
  its DEATH message and exits (`LeavesAtClose`), instead of sleeping 1 s for the parent
  to kill it (the message's only use). Its results and acks were sent before (billiard
  waits until the parent has read them), and the pipe keeps what was written after the
  writer exits. The threaded pool's result handler has stopped reading by then (it is
  told to stop before the children); the event-loop pool's may still read the message
  and signal a child that is gone (ignored; pids are handed out in turn, not reused at
  once) or not yet reaped. Children that leave for
  any other reason (recycled, shrunk, errors) keep billiard's way. This applies to both
  of Celery's prefork pools: `BlockingPool` and `AsynPool` (Redis, AMQP brokers).
- The timeout handler (task time limits) waits for its next pass on an event that
  `close`/`terminate` set (`TimeoutHandler`), not `time.sleep(1.0)`: billiard's exit
  finalizer joins it, and waited up to 1 s for the sleep to end. Likewise the worker's
  timer thread (no event loop) waits for its next entry on an event its stop sets
  (`Timer`, Celery's slept up to 1 s).

`use_bounded_prefork(worker)` puts `TaskPool` in place of Celery's prefork pool. The
worker's lifecycle calls it at `worker_init` (worker/lifecycle.py), which runs before the
pool class is resolved. Other pools are left as they are.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from billiard import pool as billiard_pool
from billiard.common import TERM_SIGNAL
from billiard.pool import Pool as BilliardPool
from celery.concurrency import asynpool, get_implementation
from celery.concurrency import prefork as celery_prefork
from celery.utils import timer2

log = logging.getLogger(__name__)
LOCK_WAIT = 1.0  # seconds


class LeavesAtClose:
    """A pool child (mixed into billiard's or Celery's) that leaves at once when the
    pool closes: no 1 s sleep waiting for the parent to kill it after its DEATH
    message."""

    _closing = False  # read the pool's end-of-work sentinel

    def _make_recv_method(self, conn: Any) -> Any:
        receive = super()._make_recv_method(conn)

        def _recv(timeout: float) -> tuple[bool, Any]:
            ready, request = receive(timeout)
            if ready and request is None:  # the sentinel: billiard's loop ends on it
                self._closing = True
            return ready, request

        return _recv

    def _do_exit(self, pid: int, exitcode: int | None, exc: BaseException | None = None) -> None:
        if not self._closing or sys.platform == "win32":
            super()._do_exit(pid, exitcode, exc)
            return
        # billiard's _do_exit without its `time.sleep(1)` (see the module's docstring).
        if exitcode is None:
            exitcode = billiard_pool.EX_FAILURE if exc else billiard_pool.EX_OK
        if self.on_exit is not None:
            self.on_exit(pid, exitcode)
        try:
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {TERM_SIGNAL})
            try:  # a SIGTERM here would leave the outqueue's lock held
                self.outq.put((billiard_pool.DEATH, (pid, exitcode)))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        finally:
            os._exit(exitcode)


class PoolWorker(LeavesAtClose, billiard_pool.Worker):
    """billiard's pool child (the threaded pool's), leaving at once when the pool closes."""


class AsynPoolWorker(LeavesAtClose, asynpool.Worker):
    """Celery's pool child (the event-loop pool's), leaving at once when the pool closes."""


class AsynPool(asynpool.AsynPool):
    """Celery's event-loop pool (Redis, AMQP brokers), whose idle children stop at once."""

    Worker = AsynPoolWorker


class TimeoutHandler(billiard_pool.TimeoutHandler):
    """billiard's time-limit thread, whose 1 s pause between passes ends as soon as the
    pool closes or terminates it (the pool's exit finalizer joins it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wake = threading.Event()
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        super().close()
        self._wake.set()

    def terminate(self) -> None:
        super().terminate()
        self._wake.set()

    def body(self) -> None:
        while self._state == billiard_pool.RUN:
            try:
                for _ in self.handle_timeouts():
                    if self._wake.wait(1.0):  # billiard: time.sleep(1.0)
                        break
            except billiard_pool.CoroStop:
                break
        billiard_pool.debug("timeout handler exiting")


class BlockingPool(BilliardPool):
    """billiard's threaded pool: its queues' locks cannot leak, its final inqueue drain
    cannot wait forever, and an idle pool stops without billiard's 1 s sleeps."""

    Worker = PoolWorker
    TimeoutHandler = TimeoutHandler

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


class Timer(timer2.Timer):
    """Celery's timer thread (a pool without an event loop), whose wait for its next
    entry ends when it is stopped: Celery's sleeps up to 1 s, and the worker's stop
    waited it out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stopping = threading.Event()
        super().__init__(*args, **kwargs)

    def _next_entry(self) -> None:
        delay = super()._next_entry()
        if delay:  # Celery's run() would tick, then sleep: both done here
            if self.on_tick:
                self.on_tick(delay)
            self._stopping.wait(delay)
        return None  # nothing left for run() to sleep

    def stop(self) -> None:
        self._stopping.set()
        with self.not_empty:  # an empty schedule waits on it
            self.not_empty.notify_all()
        super().stop()


class TaskPool(celery_prefork.TaskPool):
    """Celery's prefork pool with the bounded shutdown (for non-event-loop transports),
    whose children leave at once when it closes (every transport)."""

    BlockingPool = BlockingPool
    Pool = AsynPool
    Timer = Timer


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
