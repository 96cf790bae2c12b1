"""The Celery app and the per-process wiring of the worker.

`app` is made from the environment when `celery -A worker ...` first asks for it;
`create_app(settings)` makes another one for a given environment (tests, the CLI). Each
app carries one `worker.runtime.Runtime` (`app.runtime`) that owns the process's database,
Redis, locks, plugins, cached tables and invalidation threads. Celery's signals drive it:
the main process maps the models and checks the database before the pool forks; every
pool child (or, with a solo, threads, gevent or eventlet pool, the worker's own process:
worker/pools.py) starts its listener and outbox relay; every task starts by catching up
with the invalidation log.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from celery import Celery, current_app, signals

from cachework.errors import CacheworkError, ConfigError
from cachework.migrate import check_schema
from cachework.redis_policy import refuse_evicting
from cachework.settings import Settings, load_settings
from worker import health as _health  # noqa: F401 - registers the cachework_listeners command
from worker import node_metrics as _node_metrics  # noqa: F401 - connects the metrics signals
from worker import pools
from worker import prefork as _prefork  # noqa: F401 - a prefork shutdown that cannot hang
from worker import unknown_tasks as _unknown_tasks  # noqa: F401 - connects task_unknown
from worker.checks import check_database
from worker.logsetup import configure_logging, expected_errors_at_warning, most_verbose
from worker.runtime import Runtime
from worker.task_base import CacheworkTask

log = logging.getLogger(__name__)
TASK_MODULES = ["tasks"]


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for `settings` (default: the environment), with its runtime."""
    import celeryconfig

    settings = settings or load_settings()
    # Every task of ours (shared_task included) gets the base class that checks a call's
    # arguments and bounds a failed request's stored ones (worker/task_base.py).
    # amqp: a RabbitMQ queue of another type is one line, not a traceback (queue_types).
    app = Celery(
        "cachework", include=TASK_MODULES, task_cls=CacheworkTask, amqp="worker.queue_types:AMQP"
    )
    app.conf.update(celeryconfig.build(settings))
    app.runtime = Runtime(settings)
    expected_errors_at_warning()  # a task's `throws`: one WARNING line, no traceback
    return app


def runtime_of(app: Celery | None) -> Runtime | None:
    return getattr(app, "runtime", None)


def require_runtime(app: Celery) -> Runtime:
    """The runtime a task runs with; a ConfigError naming the app when it has none (a
    task of ours registered on an app not made by `create_app`)."""
    runtime = runtime_of(app)
    if runtime is None:
        raise ConfigError(
            f"Celery app {app.main!r} has no cachework runtime: run cachework's tasks on an "
            "app made by worker.create_app(settings) (celery -A worker)"
        )
    return runtime


def _under_celery_command() -> bool:
    """True when this process is the `celery` command (`celery -A worker ...`)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return argv0.name == "celery" or argv0.parts[-2:] == ("celery", "__main__.py")


def _exit_on_config_error(exc: CacheworkError) -> None:
    """One line on stderr and exit status 2, instead of Celery's traceback."""
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def __getattr__(name: str) -> Celery:
    """`app`: the app of `celery -A worker ...`, made from the environment when first
    asked for (importing this module reads no settings)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        made = create_app()
    except CacheworkError as exc:
        if not _under_celery_command():
            raise
        # Celery would report it deep inside its commands, with a traceback.
        _exit_on_config_error(exc)
    globals()["app"] = made
    return made


def _command_runtime() -> Runtime | None:
    """The runtime of the app `celery -A worker` runs (None before it was made)."""
    return runtime_of(globals().get("app"))


@signals.setup_logging.connect
def _setup_logging(loglevel=None, logfile=None, **_kwargs) -> None:
    runtime = _command_runtime()
    settings = runtime.settings if runtime is not None else load_settings()
    configure_logging(
        most_verbose(loglevel, settings.log_level), logfile or None, settings.log_format
    )


@signals.worker_init.connect
def _worker_init(sender=None, **_kwargs) -> None:
    """Main process, before the pool forks: map models once so children inherit them,
    check the database (its pooled connection is what the children must not share), and
    refuse a Redis whose maxmemory-policy may evict rebuild requests or queued tasks.

    A bad model module or an unreachable database stops the worker with one line
    (SystemExit: Celery logs and ignores ordinary exceptions raised by signal handlers)."""
    app = getattr(sender, "app", None)
    runtime = runtime_of(app)
    if runtime is None:
        return
    app.cachework_main_pid = os.getpid()  # the pool's children are the other processes
    try:
        # A pool the runtime cannot run in: one line before anything else is done.
        pool = pools.pool_name(getattr(sender, "pool_cls", None))
        pools.check_pool(pool)
        pools.cooperative_database_waits(pool)
        pools.size_database_pool(runtime, pool, getattr(sender, "concurrency", None))
        runtime.models  # noqa: B018 - maps the models and sets up Continuum
        check_database(runtime.database.engine)
        refuse_evicting(runtime.settings, broker=True)  # a Redis that may drop requests
        # Behind: one line naming the command to run. None of our tables yet: a worker may
        # serve only tasks that need none (the first sync says what to run).
        if check_schema(runtime.database.engine, fresh_ok=True).fresh:
            log.warning("the database has no cachework tables yet: run `cachework initdb`")
    except CacheworkError as exc:
        _exit_on_config_error(exc)


def _child_runtime() -> Runtime | None:
    """In a pool child: the runtime of the app it runs (Celery made that app current
    before sending the child's signals). None in the worker's own process, where a solo
    pool sends them too."""
    app = current_app._get_current_object()
    runtime = runtime_of(app)
    if runtime is None or getattr(app, "cachework_main_pid", None) in (None, os.getpid()):
        return None
    return runtime


@signals.worker_process_init.connect
def _worker_process_init(sender=None, **_kwargs) -> None:
    """Every prefork child, right after fork (the runtime already forgot the parent's
    sockets) or spawn (it builds its runtime: `pools.spawned_child_runtime`): start this
    child's listener and outbox relay.

    The solo pool sends this signal in the worker's own process, which starts its
    threads once ready (`_worker_ready`)."""
    pools.spawned_child_runtime(current_app._get_current_object(), sender)
    runtime = _child_runtime()
    if runtime is not None:
        runtime.start(relay=True)


@signals.worker_process_shutdown.connect
def _worker_process_shutdown(**_kwargs) -> None:
    runtime = _child_runtime()
    if runtime is not None:
        runtime.stop()


def _runs_tasks_in_process(pool: object) -> bool:
    return pool is not None and pools.runs_tasks_in_process(pools.pool_name(type(pool)))


@signals.worker_ready.connect
def _worker_ready(sender=None, **_kwargs) -> None:
    """`celery worker -P solo|threads|gevent|eventlet`: no child will ever start the
    listener and the outbox relay, so the worker's own process does (never with prefork:
    a parent with threads must not fork). Under gevent and eventlet its threads are
    greenlets of the patched process."""
    runtime = runtime_of(getattr(sender, "app", None))
    if runtime is not None and _runs_tasks_in_process(getattr(sender, "pool", None)):
        runtime.start(relay=True)


@signals.worker_shutdown.connect
def _worker_shutdown(sender=None, **_kwargs) -> None:
    runtime = runtime_of(getattr(sender, "app", None))
    if runtime is not None:
        runtime.stop()


# Sessions open in this thread when its task started (a task runs in one thread, or one
# greenlet under gevent and eventlet; prerun, the task and postrun all run there).
_task_sessions = threading.local()


@signals.task_prerun.connect
def _task_prerun(task=None, **_kwargs) -> None:
    """Apply the invalidations published before this task started (one head read)."""
    runtime = runtime_of(getattr(task, "app", None))
    if runtime is not None:
        _task_sessions.before = runtime.database.open_sessions_here
        runtime.catch_up()


@signals.task_postrun.connect
def _task_postrun(task=None, **_kwargs) -> None:
    """Log the database sessions this task opened and left open: counted in its own
    thread, so the sessions of tasks running beside it (threads, gevent, eventlet) are
    not its."""
    runtime = runtime_of(getattr(task, "app", None))
    if runtime is None:
        return
    opened = runtime.database.open_sessions_here - getattr(_task_sessions, "before", 0)
    _task_sessions.before = 0
    if opened > 0:
        log.error("task %s left %d database session(s) open", getattr(task, "name", "?"), opened)
