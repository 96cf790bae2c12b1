"""Which Celery pool a worker node runs, and where its runtime (listener, outbox relay)
runs for it.

Every pool Celery offers is supported; each needs the runtime in the process that runs
the tasks:

- `prefork` (the default): every child starts its own runtime after the fork
  (`worker_process_init`, worker/lifecycle.py). The parent never starts threads: it forks.
- `solo`, `threads`, `gevent`, `eventlet`: the tasks run in the worker's own process, so
  that process starts the runtime once the node is ready (`worker_ready`). The tasks share
  it (its cached tables are thread-safe), and its database pool keeps a connection per
  task running at once (`size_database_pool`). With gevent and eventlet its threads are
  greenlets, and every socket wait must be cooperative:

  - the process must be monkey-patched before anything else is imported, which the
    `celery` command does when the pool is named on its command line (`-P gevent`);
    a green pool chosen by configuration only (`worker_pool`) is not patched, and is
    refused at start-up with one line;
  - redis-py waits on patched sockets; psycopg 3 notices gevent's patching and waits
    through the patched `select`, but not eventlet's, and would wait in C, blocking
    every greenlet for the length of each query (and for ever on a lock another
    greenlet holds): under eventlet its wait function is switched to the patched
    `select` (`cooperative_database_waits`).

A prefork child spawned rather than forked (billiard's default on macOS, or
`--pool-start-method spawn`) is a fresh interpreter: the app Celery unpickled there has
no runtime, so the child builds its own from the environment it inherited
(`spawned_child_runtime`). A pool cachework does not know (`-P custom`) is refused at
start-up: one line naming the pool and what to use instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from celery import concurrency
from celery.app.trace import build_tracer

from cachework.database import Database
from cachework.errors import ConfigError
from cachework.settings import load_settings
from cachework.worker.logsetup import expected_errors_at_warning
from cachework.worker.runtime import Runtime

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)
FORKING = ("prefork",)
IN_PROCESS = ("solo", "threads", "gevent", "eventlet")
GREEN = ("gevent", "eventlet")
SUPPORTED = FORKING + IN_PROCESS
# Database connections a worker process needs besides its tasks': the outbox relay, the
# sweeper of its commits' relays, a task start's outbox read.
SPARE_CONNECTIONS = 3


def pool_name(pool_cls: object) -> str:
    """The alias (`prefork`, `gevent`, ...) of a pool given as an alias, a "module:Class"
    path or a class; else its path as given."""
    if isinstance(pool_cls, str):
        target = concurrency.ALIASES.get(pool_cls, pool_cls)
    elif isinstance(pool_cls, type):
        target = f"{pool_cls.__module__}:{pool_cls.__qualname__}"
    else:
        return repr(pool_cls)
    for alias in SUPPORTED:
        if concurrency.ALIASES.get(alias) == target:
            return alias
    if isinstance(pool_cls, type):  # a subclass of one of Celery's pools
        for alias in SUPPORTED:
            path = concurrency.ALIASES.get(alias)
            if path and issubclass(pool_cls, concurrency.get_implementation(path)):
                return alias
    return target


def pool_option(args: list[str]) -> str | None:
    """The pool a `celery worker` command line names (`-P x`, `-Px`, `--pool x`,
    `--pool=x`), or None."""
    for i, arg in enumerate(args):
        if arg in ("-P", "--pool") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--pool="):
            return arg.partition("=")[2]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:]
    return None


def runs_tasks_in_process(name: str) -> bool:
    """Whether the pool `name` runs its tasks in the worker's own process (no children)."""
    return name in IN_PROCESS


def check_pool(name: str) -> None:
    """ConfigError (one line: the pool, why, what to use) unless cachework can run in the
    pool `name`: a pool it knows; a green pool, monkey-patched."""
    if name not in SUPPORTED:
        raise ConfigError(
            f"Celery pool {name!r} is not supported by cachework (its runtime could not "
            f"be started where the tasks run): use one of {', '.join(SUPPORTED)}"
        )
    if name in GREEN and not monkey_patched(name):
        raise ConfigError(
            f"Celery pool {name!r} needs the process monkey-patched before anything is "
            f"imported, which the celery command does only when the pool is on its command "
            f"line: run `celery -A cachework.worker worker -P {name}` "
            f"(not worker_pool={name!r} alone)"
        )


def size_database_pool(runtime: Runtime, name: str, concurrency: object) -> None:
    """A pool running its tasks in this one process runs `concurrency` of them at once,
    each with a connection of its own while it uses the database: keep that many pooled
    (and SPARE_CONNECTIONS) instead of a process's usual 5, or tasks beyond 10 (5 more at
    a peak) wait for a connection, and fail after 30 s. Connections are opened as tasks
    need them. Only before the runtime's database is made (a database handed in stays)."""
    if name not in IN_PROCESS or not isinstance(concurrency, int):
        return
    size = concurrency + SPARE_CONNECTIONS
    if size <= 5:
        return
    settings = runtime.settings
    with runtime._lock:
        if runtime._database is None:  # as if handed in: Runtime(settings, database=...)
            runtime._database = Database(
                settings.database_url, settings.database_pooler, pool_size=size
            )


def monkey_patched(name: str) -> bool:
    """Whether this process's sockets were patched by the green library `name`."""
    if name == "gevent":
        monkey = sys.modules.get("gevent.monkey")
        return bool(monkey is not None and monkey.is_module_patched("socket"))
    if name == "eventlet":
        patcher = sys.modules.get("eventlet.patcher")
        return bool(patcher is not None and patcher.is_monkey_patched("socket"))
    return False


def cooperative_database_waits(name: str) -> None:
    """Under a green pool, make psycopg 3 wait for the server through the patched
    `select` (it does so by itself under gevent; its C wait would block the process)."""
    if name not in GREEN:
        return
    try:
        from psycopg import waiting
    except ImportError:  # no psycopg: nothing waits in C
        return
    if getattr(waiting, "wait_c", None) is not None and waiting.wait is waiting.wait_c:
        waiting.wait = waiting.wait_select  # the green `select`: no FD_SETSIZE limit
        log.info("psycopg waits through the %s-patched select", name)


def spawned_child_runtime(app: Celery | None, hostname: str | None) -> Runtime | None:
    """In a prefork child started as a fresh interpreter (spawn): give the app Celery
    unpickled here the runtime it lacks, built from the environment the child inherited
    (where `celery -A cachework.worker` took its settings, and the node's metrics folder, named
    before prometheus_client was imported here), as the parent did before forking: the
    models mapped (tasks a model module registers get traced). None when this is no such
    child."""
    if (
        app is None
        or getattr(app, "runtime", None) is not None
        or app.main != "cachework"
        or not os.environ.get("FORKED_BY_MULTIPROCESSING")  # set by Celery for spawn
    ):
        return None
    runtime = app.runtime = Runtime(load_settings())
    expected_errors_at_warning()
    runtime.models  # noqa: B018 - maps the models and sets up Continuum, as the parent did
    for name, task in list(app.tasks.items()):
        if task.__trace__ is None:  # registered by a model module just now
            task.__trace__ = build_tracer(name, task, app.loader, hostname, app=app)
    return runtime
