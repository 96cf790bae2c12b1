"""The life of a cachework worker node: every Celery signal it handles, in one place.

`create_app` keeps a `WorkerLifecycle` on the app (`app.lifecycle`) beside its runtime. It
holds the node's state (its main process, metrics folder, exporter process, pool kind)
and does what each moment of a worker's life needs. `connect_signals()` connects each of
Celery's signals once, to a function of this module that finds the sender's app and calls
its lifecycle (apps that are not cachework's are left alone). In the order of a life:

1. `setup_logging` (every process): cachework's log format and level.
2. `worker_init` (the main process, before the pool forks): refuse a pool the runtime
   cannot run in (worker/pools.py), give prefork its bounded shutdown (worker/prefork.py),
   size the database pool, map the models, check the database, refuse an evicting Redis,
   say when the schema is missing; then the node's metrics folder, named before
   prometheus_client is imported so that every process writes its values there
   (readiness reads each child's listener state from it), and with
   CACHEWORK_METRICS_PORT the exporter process (worker/exporter.py), which keeps the
   main process free of threads (it forks); and the interpreter's final garbage
   collection skipped at exit (`skip_final_collection`).
3. `worker_process_init` (every prefork child, after fork or spawn): its runtime starts
   its listener, outbox relay and sampler.
4. `worker_ready` (a pool that runs tasks in the main process: solo, threads, gevent,
   eventlet): the main process starts them instead.
5. `task_prerun` / `task_postrun` (around each task): the request stores bounded
   arguments (worker/task_base.py); the invalidations published before the task are
   applied; sessions the task left open are logged; with an exporter, the task's run
   time, outcome and (version import) rows are recorded and a sample taken.
6. `task_unknown`: a line saying why an unknown task reached this worker
   (worker/unknown_tasks.py).
7. `worker_process_shutdown` (a prefork child ending): its runtime stops (a last copy of
   its statistics), then its per-process gauges leave the sums.
8. `worker_shutdown` (the main process): its runtime stops (in-process pools), the
   exporter stops and the folder is removed.

A runtime is stopped once per process, whichever signals come. The remote-control
command `cachework_listeners` (the node's children's listeners, for `cachework health`)
is registered with the signals; `worker_init` adds `NodeMarker`, the step that marks the
node in Celery's `stats`, so that the command is sent to cachework's nodes only. With
JSON logs, Celery's plain-text start-up banner is one JSON record instead
(`celeryd_after_setup`), and logging is set up at `celeryd_init`, Celery's first signal,
so that nothing before `setup_logging` is written in another format.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import bootsteps, current_app, signals
from celery.worker.control import Panel, control_command

from cachework import instruments
from cachework.cache.invalidation.node_lock import NodeLock
from cachework.errors import CacheworkError
from cachework.migrate import check_schema
from cachework.redis_policy import refuse_evicting
from cachework.settings import load_settings, mask_url
from cachework.worker import health, pools, prefork, routing, unknown_tasks
from cachework.worker.change_follower import ChangeFollower
from cachework.worker.checks import check_database
from cachework.worker.exporter import start_exporter, stop_exporter
from cachework.worker.logsetup import banner_fields, configure_logging, json_console, most_verbose
from cachework.worker.task_base import CacheworkTask

if TYPE_CHECKING:
    from celery import Celery

    from cachework.settings import Settings
    from cachework.worker.runtime import Runtime

log = logging.getLogger(__name__)


def exit_on_config_error(exc: CacheworkError) -> None:
    """One line on stderr and exit status 2, instead of Celery's traceback (Celery logs
    and ignores ordinary exceptions raised by signal handlers: SystemExit stops it)."""
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def runs_tasks_in_process(pool: object) -> bool:
    """Whether the pool object `pool` runs its tasks in the worker's own process."""
    return pool is not None and pools.runs_tasks_in_process(pools.pool_name(type(pool)))


class WorkerLifecycle:
    """What a cachework worker node does at each of Celery's signals, and its state."""

    def __init__(self, app: Celery) -> None:
        self.app = app  # its runtime is read at each signal: an app may be given another
        self.main_pid: int | None = None  # the node's main process; children are the others
        self.folder: str | None = None  # the node's metrics folder (values summed there)
        self.exporter: subprocess.Popen | None = None
        self.exported = False  # scraped: tasks recorded, every statistic sampled
        self.in_process = False  # the pool runs tasks in the main process
        self._stopped_in: int | None = None  # the pid whose runtime was stopped
        self._started: dict[str, float] = {}  # task id -> perf_counter at prerun
        self._sessions = threading.local()  # sessions open in this thread at a task's start
        self._follower: ChangeFollower | None = None  # data-driven rebuilds (this process)

    @property
    def runtime(self) -> Runtime:
        return self.app.runtime

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def in_child(self) -> bool:
        """Whether this process is one of the pool's children (not the node's main)."""
        return self.main_pid not in (None, os.getpid())

    # --- the main process ---------------------------------------------------------------

    def worker_init(self, worker: Any) -> None:
        """Before the pool forks (see the module's docstring); a bad pool, model module or
        database stops the worker with one line."""
        self.main_pid = os.getpid()
        # Before the worker builds its steps from the app's (right after this signal).
        self.app.steps["worker"].add(NodeMarker)
        runtime = self.runtime
        try:
            pool = pools.pool_name(getattr(worker, "pool_cls", None))
            pools.check_pool(pool)  # one line before anything else is done
            prefork.use_bounded_prefork(worker)
            pools.cooperative_database_waits(pool)
            pools.size_database_pool(runtime, pool, getattr(worker, "concurrency", None))
            runtime.models  # noqa: B018 - maps the models once: the children inherit them
            runtime.item_reads  # noqa: B018 - plugins' `depends_on` checked against them
            check_database(runtime.database.engine)
            refuse_evicting(runtime.settings, broker=True)  # a Redis that may drop requests
            # None of our tables yet: a worker may serve only tasks that need none.
            if check_schema(runtime.database.engine, fresh_ok=True).fresh:
                log.warning("the database has no cachework tables yet: run `cachework initdb`")
            self._start_node_metrics(getattr(worker, "hostname", "") or "")
        except CacheworkError as exc:
            exit_on_config_error(exc)
        skip_final_collection()

    def _start_node_metrics(self, node: str) -> None:
        folder = tempfile.mkdtemp(prefix="cachework-metrics-")
        # Removed at worker_shutdown; also when the worker stops before that.
        atexit.register(_remove_folder, folder, os.getpid())
        self.folder = folder
        if not instruments.use_multiprocess_dir(folder):
            log.warning(
                "prometheus_client was imported before the worker started: this node's "
                "processes keep their metrics to themselves (no sums, no children's "
                "listeners in readiness)"
            )
        self.exported = self.settings.metrics_port is not None
        if self.exported:
            self.exporter = start_exporter(folder, node)

    def before_init(self, options: dict) -> None:
        """Celery's first signal in a worker's main process: cachework's logging from here
        on, so that what Celery warns and `worker_init` logs has its format (Celery sets
        up logging only after `worker_init`); with JSON logs, Celery's own console lines
        too (`json_console`)."""
        settings = self.settings
        level = most_verbose(options.get("loglevel"), settings.log_level)
        configure_logging(level, options.get("logfile") or None, settings.log_format)
        if settings.log_format == "json":
            json_console()

    def after_setup(self, worker: Any) -> None:
        """Just before Celery prints its banner: with JSON logs, the banner's facts are one
        JSON log record instead (`worker.quiet` turns the plain-text banner off)."""
        if self.settings.log_format == "json":
            worker.quiet = True
            log.info("celery worker %s starting", worker.hostname, extra=banner_fields(worker))

    def worker_ready(self, consumer: Any) -> None:
        """An in-process pool: no child will start the runtime's threads, so this process
        does (never with prefork: a parent with threads must not fork)."""
        if runs_tasks_in_process(getattr(consumer, "pool", None)):
            self.in_process = True
            self._start_runtime()

    def worker_shutdown(self) -> None:
        self._stop_runtime()
        proc, self.exporter = self.exporter, None
        if proc is not None:
            stop_exporter(proc)
        folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            # A worker run inside another program (tests) leaves the environment as it was.
            instruments.forget_multiprocess_dir(folder)

    def node_listeners(self) -> dict:
        """The answer to `cachework_listeners`: the children's listeners from the folder
        (or, in-process, this process's own)."""
        stale_after = self.settings.listener_stale_after
        answer = health.node_listeners(stale_after, instruments.multiprocess_dir())
        if self.in_process and not answer["listeners"]:
            answer["problems"] = health.runtime_listener(self.runtime)
        return answer

    # --- every process running tasks ----------------------------------------------------

    def child_init(self) -> None:
        if self.in_child():
            self._start_runtime()

    def child_shutdown(self) -> None:
        if self.in_child():
            self._stop_runtime()
            instruments.mark_process_dead()

    def _start_runtime(self) -> None:
        sampler = self.runtime.sampler
        sampler.listener_only = not self.exported  # only readiness reads the others
        self.runtime.start(relay=True, sample=instruments.multiprocess_dir() is not None)
        self._start_follower()

    def _start_follower(self) -> None:
        """When plugins declare what their items read: follow the changes (one process
        per node, elected like the relay) and send the rebuilds they make due."""
        runtime = self.runtime
        if not runtime.item_reads or (self._follower is not None and self._follower.alive):
            return
        s = runtime.settings
        self._follower = ChangeFollower(
            runtime.database.engine,
            runtime.invalidation_log(),
            runtime.item_reads,
            self._send_rebuild,
            delay=s.rebuild_delay,
            every=s.rebuild_every,
            resend=s.rebuild_resend,
            elector=NodeLock.for_relay(
                "changes", mask_url(s.database_url), mask_url(s.redis_url or "db-log")
            ),
        ).start()

    def _send_rebuild(self, project: str | None, app_name: str, names: list[str] | None) -> None:
        self.app.send_task(
            routing.REBUILD_CHANGED,
            kwargs={"project": project, "app_name": app_name, "names": names},
        )

    def _stop_runtime(self) -> None:
        if self._stopped_in != os.getpid():
            self._stopped_in = os.getpid()
            follower, self._follower = self._follower, None
            if follower is not None:
                follower.stop()
            self.runtime.stop()

    def task_prerun(self, task: Any, task_id: str | None) -> None:
        """Apply the invalidations published before this task started (one head read)."""
        if self.exported and task_id:
            self._started[task_id] = time.perf_counter()
        self._sessions.before = self.runtime.database.open_sessions_here
        self.runtime.catch_up()

    def task_postrun(self, task: Any, task_id: str | None, retval: Any, state: Any) -> None:
        """Record the task (with an exporter); log the database sessions it left open,
        counted in its own thread (a task runs in one thread, or one greenlet), so the
        sessions of tasks running beside it are not its."""
        if self.exported:
            self._record_task(task, task_id, retval, state)
        opened = self.runtime.database.open_sessions_here - getattr(self._sessions, "before", 0)
        self._sessions.before = 0
        if opened > 0:
            name = getattr(task, "name", "?")
            log.error("task %s left %d database session(s) open", name, opened)

    def _record_task(self, task: Any, task_id: str | None, retval: Any, state: Any) -> None:
        started = self._started.pop(task_id, None) if task_id else None
        seconds = None if started is None else time.perf_counter() - started
        name = getattr(task, "name", None) or "unknown"
        instruments.record_task(name, str(state or "UNKNOWN"), seconds)
        if name == routing.IMPORT_VERSIONS and seconds is not None:
            instruments.record_import(retval if state == "SUCCESS" else None, seconds, str(state))
        self.runtime.sampler.sync()


def skip_final_collection() -> None:
    """At this process's exit, let the interpreter skip its last garbage collections:
    they walk every object a worker made (its models, Celery, SQLAlchemy), 0.4-1.4 s of
    each stop measured here, to free memory the exit frees anyway. Registered once;
    it runs only when the interpreter ends (a test process running a worker in it too)."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def _remove_folder(folder: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def lifecycle_of(app: Celery | None) -> WorkerLifecycle | None:
    """The lifecycle of `app`; one is made for an app that has a runtime but none (made by
    hand, or unpickled in a spawned child); None for an app that is not cachework's."""
    found = getattr(app, "lifecycle", None)
    if found is None:
        if getattr(app, "runtime", None) is None:
            return None
        found = WorkerLifecycle(app)
        app.lifecycle = found
    return found


def _current() -> Celery:
    return current_app._get_current_object()


# --- Celery's signals, each connected once (connect_signals) ---------------------------------


def on_setup_logging(loglevel: Any = None, logfile: Any = None, **_kwargs: Any) -> None:
    lifecycle = lifecycle_of(_current())
    settings = lifecycle.settings if lifecycle is not None else load_settings()
    configure_logging(
        most_verbose(loglevel, settings.log_level), logfile or None, settings.log_format
    )


def on_celeryd_init(instance: Any = None, options: Any = None, **_kwargs: Any) -> None:
    lifecycle = lifecycle_of(getattr(instance, "app", None))
    if lifecycle is not None:
        lifecycle.before_init(dict(options or {}))


def on_worker_init(sender: Any = None, **_kwargs: Any) -> None:
    lifecycle = lifecycle_of(getattr(sender, "app", None))
    if lifecycle is not None:
        lifecycle.worker_init(sender)


def on_worker_process_init(sender: Any = None, **_kwargs: Any) -> None:
    """Celery made the child's app current before this signal; a spawned child's app was
    unpickled without a runtime, and gets one built from the inherited environment."""
    app = _current()
    spawned = pools.spawned_child_runtime(app, sender)
    lifecycle = lifecycle_of(app)
    if lifecycle is None:
        return
    if spawned is not None:
        lifecycle.main_pid = os.getppid()
        lifecycle.exported = lifecycle.settings.metrics_port is not None
    lifecycle.child_init()


def on_after_setup(instance: Any = None, **_kwargs: Any) -> None:
    lifecycle = lifecycle_of(getattr(instance, "app", None))
    if lifecycle is not None:
        lifecycle.after_setup(instance)


def on_worker_ready(sender: Any = None, **_kwargs: Any) -> None:
    lifecycle = lifecycle_of(getattr(sender, "app", None))
    if lifecycle is not None:
        lifecycle.worker_ready(sender)


def on_task_prerun(sender: Any = None, task: Any = None, task_id: Any = None, **_: Any) -> None:
    task = task or sender
    if isinstance(task, CacheworkTask):  # any app's: the stored request is bounded
        task.bound_stored_request()
    lifecycle = lifecycle_of(getattr(task, "app", None))
    if lifecycle is not None:
        lifecycle.task_prerun(task, task_id)


def on_task_postrun(
    sender: Any = None,
    task: Any = None,
    task_id: Any = None,
    retval: Any = None,
    state: Any = None,
    **_kwargs: Any,
) -> None:
    task = task or sender
    lifecycle = lifecycle_of(getattr(task, "app", None))
    if lifecycle is not None:
        lifecycle.task_postrun(task, task_id, retval, state)


def on_task_unknown(sender: Any = None, message: Any = None, name: Any = None, **_: Any) -> None:
    if lifecycle_of(getattr(sender, "app", None)) is not None:
        unknown_tasks.report(sender, message, name)


def on_worker_process_shutdown(**_kwargs: Any) -> None:
    lifecycle = lifecycle_of(_current())
    if lifecycle is not None:
        lifecycle.child_shutdown()


def on_worker_shutdown(sender: Any = None, **_kwargs: Any) -> None:
    lifecycle = lifecycle_of(getattr(sender, "app", None))
    if lifecycle is not None:
        lifecycle.worker_shutdown()


def _cachework_listeners(state: Any, **_kwargs: Any) -> dict:
    """Remote control (runs in the node's main process): its children's listeners."""
    lifecycle = lifecycle_of(state.consumer.app)
    if lifecycle is None:
        return health.node_listeners(30.0, None)
    return lifecycle.node_listeners()


class NodeMarker(bootsteps.StartStopStep):
    """A step of a cachework worker (nothing to start or stop) that marks its node in Celery's
    built-in `stats` (`health.MARKER`): every worker on a broker answers `stats`, so
    `cachework health` finds cachework's nodes without sending another app's workers a
    command they do not know (each would log it as an error, with a traceback)."""

    name = "cachework.NodeMarker"

    def info(self, worker: Any) -> dict:
        return {health.MARKER: {"pid": os.getpid()}}


# In the order of a worker's life (the module's docstring).
SIGNALS = (
    (signals.celeryd_init, on_celeryd_init),
    (signals.setup_logging, on_setup_logging),
    (signals.worker_init, on_worker_init),
    (signals.celeryd_after_setup, on_after_setup),
    (signals.worker_process_init, on_worker_process_init),
    (signals.worker_ready, on_worker_ready),
    (signals.task_prerun, on_task_prerun),
    (signals.task_postrun, on_task_postrun),
    (signals.task_unknown, on_task_unknown),
    (signals.worker_process_shutdown, on_worker_process_shutdown),
    (signals.worker_shutdown, on_worker_shutdown),
)


def connect_signals() -> None:
    """Connect each of `SIGNALS` once (idempotent) and register `cachework_listeners`."""
    for signal, handler in SIGNALS:
        signal.connect(handler, weak=False, dispatch_uid=f"cachework.{handler.__name__}")
    if health.COMMAND not in Panel.data:
        control_command(name=health.COMMAND)(_cachework_listeners)
