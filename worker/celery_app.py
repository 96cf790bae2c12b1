"""The Celery app of the worker.

`app` is made from the environment when `celery -A cachework.worker ...` first asks for it;
`create_app(settings)` makes another one for a given environment (tests, the CLI). Each
app carries one `cachework.worker.runtime.Runtime` (`app.runtime`) that owns the process's database,
Redis, locks, plugins, cached tables and invalidation threads, and one
`cachework.worker.lifecycle.WorkerLifecycle` (`app.lifecycle`) that Celery's signals drive: the main
process maps the models and checks the database before the pool forks; every pool child
(or, with a solo, threads, gevent or eventlet pool, the worker's own process:
worker/pools.py) starts its listener and outbox relay; every task starts by catching up
with the invalidation log.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from celery import Celery

from cachework.errors import CacheworkError, ConfigError
from cachework.settings import Settings, load_settings
from cachework.worker import celery_settings, lifecycle
from cachework.worker.lifecycle import WorkerLifecycle, exit_on_config_error
from cachework.worker.logsetup import expected_errors_at_warning
from cachework.worker.runtime import Runtime
from cachework.worker.task_base import CacheworkTask

log = logging.getLogger(__name__)
TASK_MODULES = ["cachework.tasks"]


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for `settings` (default: the environment), with its runtime."""
    settings = settings or load_settings()
    # Every task of ours (shared_task included) gets the base class that checks a call's
    # arguments and bounds a failed request's stored ones (worker/task_base.py).
    # amqp: a RabbitMQ queue of another type is one line, not a traceback (queue_types).
    app = Celery(
        "cachework",
        include=TASK_MODULES,
        task_cls=CacheworkTask,
        amqp="cachework.worker.queue_types:AMQP",
    )
    app.conf.update(celery_settings.build(settings))
    app.runtime = Runtime(settings)
    app.lifecycle = WorkerLifecycle(app)
    lifecycle.connect_signals()
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
            "app made by worker.create_app(settings) (celery -A cachework.worker)"
        )
    return runtime


def _under_celery_command() -> bool:
    """True when this process is the `celery` command (`celery -A cachework.worker ...`)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return argv0.name == "celery" or argv0.parts[-2:] == ("celery", "__main__.py")


def __getattr__(name: str) -> Celery:
    """`app`: the app of `celery -A cachework.worker ...`, made from the environment when first
    asked for (importing this module reads no settings)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        made = create_app()
    except CacheworkError as exc:
        if not _under_celery_command():
            raise
        # Celery would report it deep inside its commands, with a traceback.
        exit_on_config_error(exc)
    globals()["app"] = made
    return made


# Old names of the task hooks (tests): the lifecycle's handlers of these signals.
_task_prerun = lifecycle.on_task_prerun
_task_postrun = lifecycle.on_task_postrun
_runs_tasks_in_process = lifecycle.runs_tasks_in_process

# Connected when this module is imported, not only by `create_app`: a prefork child
# started by spawn unpickles its app (no `create_app` there) and imports this module
# with the task modules, before Celery sends it `worker_process_init`.
lifecycle.connect_signals()
