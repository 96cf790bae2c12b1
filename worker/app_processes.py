"""The one call for an app's own processes: `enable(Session)` tracks the app's writes and
keeps a started runtime in the calling process and in every process forked from it.

An app's code runs in many processes: web workers forked by gunicorn or uwsgi (after the
app was imported, with `--preload` or uwsgi's default), and the app's own Celery workers,
whose prefork children are forked from a main process that imported the task modules.
Each needs its session factory tracked (an outbox row in every transaction that writes
a cached table's rows), its engine's pool not shared with the parent, and its own started
runtime (listener thread, read-your-writes, the relay of its own commits). Put the call
where the app makes its session factory, a module every process imports:

    from cachework.api import enable
    Session = sessionmaker(engine)
    runtime = enable(Session)      # CACHEWORK_* from the environment

A forked child then disposes the engine's inherited connections without closing them
(SQLAlchemy's recipe for forks), forgets the parent's runtime state and starts its own.
Python runs that for every `os.fork()` (gunicorn, billiard's prefork pool, the
multiprocessing fork method); uwsgi forks in C, so under uwsgi it is registered with
`uwsgidecorators.postfork` as well.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from cachework.cache.invalidation import track
from cachework.cache.invalidation.tracking import Tracking, bind_of
from cachework.settings import Settings, load_settings
from cachework.worker.runtime import Runtime, start_runtime

log = logging.getLogger(__name__)


def enable(
    session_factory: Any, settings: Settings | None = None, *, runtime: Runtime | None = None
) -> Runtime:
    """Track `session_factory`'s writes (any form `track()` takes) with a runtime started
    here (default: one for `settings`, else the environment) and in every child forked
    from this process; returns the runtime. Call once per factory, at import time of the
    module that makes it."""
    runtime = runtime.start() if runtime is not None else start_runtime(settings or load_settings())
    tracking = track(session_factory, runtime)
    engine = bind_of(session_factory)
    child = _ChildStart(runtime, tracking, getattr(engine, "sync_engine", engine))
    os.register_at_fork(after_in_child=child)
    _register_uwsgi(child)
    return runtime


class _ChildStart:
    """Run in a forked child: its own pool, runtime and threads (never raises: a fork
    handler's error would be printed and ignored, leaving the child half set up)."""

    def __init__(self, runtime: Runtime, tracking: Tracking, engine: Any) -> None:
        self._runtime = weakref.ref(runtime)  # a fork handler must not keep it alive
        self._tracking = tracking
        self._engine = engine

    def __call__(self) -> None:
        runtime = self._runtime()
        if runtime is None:
            return
        try:
            if self._engine is not None:
                self._engine.dispose(close=False)  # the parent's connections stay the parent's
            runtime.after_fork()  # again under uwsgi, whose C fork runs no Python hook
            runtime.start()
        except Exception:
            log.exception("cachework: starting the runtime in a forked process failed")


def _register_uwsgi(child: _ChildStart) -> None:
    try:
        import uwsgidecorators  # only importable inside uwsgi
    except ImportError:
        return
    uwsgidecorators.postfork(child)
