"""The Celery app and the per-process wiring of the worker.

`app` is configured lazily from `celeryconfig`; `create_app(settings)` makes another one
for a given environment (tests). Signal handlers do the per-process work in one place:
bootstrap the models in the main process before the pool forks, and give every child its
own database connections after the fork.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from celery import Celery, signals

from cache import database as db
from cache.errors import CacheworkError
from cache.settings import Settings, load_settings
from worker import invalidation as _invalidation  # noqa: F401 - connects task_prerun
from worker.bootstrap import bootstrap
from worker.checks import check_database
from worker.logsetup import configure_logging, most_verbose

log = logging.getLogger(__name__)
_LOADED_IN_PID = os.getpid()
TASK_MODULES = ["tasks"]
# Run in every pool child right after fork, in order ("module:function", no arguments).
PROCESS_INIT_HOOKS = [
    "cache.database:after_fork",
    "worker.redis_client:after_fork",
    "worker.registry:reset_after_fork",
    "worker.invalidation:start_in_child",
]
# Run in every pool child at shutdown, in order.
PROCESS_SHUTDOWN_HOOKS: list[str] = ["worker.invalidation:stop_in_child"]


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for `settings` (default: the environment, through `celeryconfig`)."""
    app = Celery("cachework", include=TASK_MODULES)
    if settings is None:
        app.config_from_object("celeryconfig")
    else:
        import celeryconfig

        app.conf.update(celeryconfig.build(settings))
    return app


def _under_celery_command() -> bool:
    """True when this process is the `celery` command (`celery -A worker ...`)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return argv0.name == "celery" or argv0.parts[-2:] == ("celery", "__main__.py")


def _exit_on_config_error(exc: CacheworkError) -> None:
    """One line on stderr and exit status 2, instead of Celery's traceback."""
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()
    raise SystemExit(2)


if _under_celery_command():
    # Celery loads the config lazily, deep inside its commands: check it up front.
    try:
        load_settings()
    except CacheworkError as _exc:
        _exit_on_config_error(_exc)

app = create_app()


@signals.setup_logging.connect
def _setup_logging(loglevel=None, logfile=None, **_kwargs) -> None:
    configure_logging(most_verbose(loglevel, load_settings().log_level), logfile or None)


@signals.worker_init.connect
def _worker_init(**_kwargs) -> None:
    """Main process, before the pool forks: map models once so children inherit them,
    and check the database (its pooled connection is what `after_fork` must not share).

    A bad model module or an unreachable database stops the worker with one line
    (SystemExit: Celery logs and ignores ordinary exceptions raised by signal handlers)."""
    try:
        bootstrap(load_settings().models)
        check_database(db.get_database().engine)
    except CacheworkError as exc:
        _exit_on_config_error(exc)


def _run_hooks(hooks: list[str]) -> None:
    for hook in hooks:
        module, func = hook.split(":")
        getattr(importlib.import_module(module), func)()


@signals.worker_process_init.connect
def _worker_process_init(**_kwargs) -> None:
    """Every pool child, right after fork: never reuse the parent's sockets.

    The solo pool sends this signal in the process that made the app: nothing was
    inherited there, so the hooks (which would discard live pools) do not run."""
    if os.getpid() != _LOADED_IN_PID:
        _run_hooks(PROCESS_INIT_HOOKS)


@signals.worker_process_shutdown.connect
def _worker_process_shutdown(**_kwargs) -> None:
    if os.getpid() != _LOADED_IN_PID:
        _run_hooks(PROCESS_SHUTDOWN_HOOKS)


@signals.task_postrun.connect
def _task_postrun(task=None, **_kwargs) -> None:
    opened = db.get_database().open_sessions
    if opened:
        log.error("task %s left %d database session(s) open", getattr(task, "name", "?"), opened)
