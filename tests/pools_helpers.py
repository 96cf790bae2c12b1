"""A host app's task that writes through a tracked session, for tests/test_topology_pools.py.

Workers started with `CACHEWORK_MODELS=demo.models,tests.pools_helpers` import this
module as one of the app's model modules (it re-exports the demo's `Base`, which is what
bootstrap asks of one), which registers the task the way a host app's own task module
would. It goes to Celery's default queue, which a cachework worker consumes.
"""

from __future__ import annotations

import os
import threading
import time

import sqlalchemy as sa
from celery import shared_task

from demo.models import Base, Category  # noqa: F401 - Base: bootstrap's model check

_tracked: set[int] = set()
_lock = threading.Lock()


@shared_task(name="cachework_test.rename", bind=True)
def rename(self, key: int, name: str, hold: float = 0.0) -> dict:
    """Rename category `key` through a tracked session of this process's runtime, keeping
    the session open `hold` seconds in a query (tasks beside it see it open, and run only
    if waiting on the server is cooperative), then read the category through the cached
    table: read-your-writes inside the worker."""
    from cachework.cache.invalidation import track
    from cachework.worker.celery_app import require_runtime

    started = time.time()
    runtime = require_runtime(self.app)
    database = runtime.database
    with _lock:
        if id(database) not in _tracked:
            track(database.sessionmaker, runtime)  # once per process, as an app does
            _tracked.add(id(database))
    with database.session() as session:
        session.execute(sa.update(Category).where(Category.id == key).values(name=name))
        if hold:  # waiting on the server: other tasks run meanwhile only if it is cooperative
            session.execute(sa.text("SELECT pg_sleep(:s)"), {"s": hold})
    read = runtime.registry.table("categories").get(key)["name"]
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "read": read,
        "started": started,
        "ended": time.time(),
    }


@shared_task(name="cachework_test.hold", bind=True)
def hold(self, seconds: float) -> list[float]:
    """Hold a database connection `seconds` in a query; the server's clock at its start
    and end (tasks overlapping there had a connection each at the same time)."""
    from cachework.worker.celery_app import require_runtime

    with require_runtime(self.app).database.session() as session:
        now = sa.text("SELECT extract(epoch FROM clock_timestamp())")
        started = float(session.execute(now).scalar_one())
        session.execute(sa.text("SELECT pg_sleep(:s)"), {"s": seconds})
        ended = float(session.execute(now).scalar_one())
    return [started, ended]
