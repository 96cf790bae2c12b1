"""Celery settings (lowercase names), built from the `CACHEWORK_*` environment.

`build(settings)` gives them as a dict (`celeryconfig.build` is the same function, at the
top-level name Celery users look for); `worker.create_app(settings)` applies it to the app
it makes (for `celery -A cachework.worker ...`, from the environment when the app is first asked
for). Importing this module reads no settings; building the settings creates nothing: the
embedded broker makes its folders when it connects (`cachework.worker.fs_transport`), beat makes the
folder of its schedule file when it opens it (`cachework.worker.beat`).
"""

from __future__ import annotations

from celery.schedules import crontab

from cachework.pooler import result_engine_options
from cachework.settings import Settings
from cachework.worker import routing
from cachework.worker.queue_types import celery_settings as queue_type_settings
from cachework.worker.queue_types import declared_queues


def _transport_options(s: Settings) -> dict:
    # Redis: how long a message a dead worker took waits before it is delivered again
    # (CACHEWORK_BROKER_VISIBILITY_TIMEOUT). The default is longer than every retry
    # countdown (a shorter one also hands out again retries waiting for their countdown);
    # a job that runs longer gets a second delivery while it runs, which its lock makes
    # harmless (docs/reliability.md).
    # The transport looks for such messages in a periodic sweep: every
    # CACHEWORK_BROKER_RESTORE_INTERVAL seconds, scanning on every sweep (throttle 1; kombu's
    # defaults, 10 s x every 10th sweep, add up to 100 s). Other transports ignore these
    # options (the virtual ones read only the names they know, py-amqp drops the rest).
    options: dict = {
        "visibility_timeout": s.broker_visibility_timeout,
        "unacked_restore_interval": s.broker_restore_interval,
        "unacked_restore_throttle": 1,
    }
    if s.broker_url.startswith("filesystem"):
        folder = s.broker_folder
        options.update(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            control_folder=str(folder / "control"),
            store_processed=False,
            polling_interval=0.05,
        )
    options.update(s.broker_transport_options)
    return options


def _beat_schedule(s: Settings) -> dict:
    schedule: dict = {}
    if s.import_schedule:
        minute, hour, day_of_month, month_of_year, day_of_week = s.import_schedule.split()
        schedule["nightly-version-import"] = {
            "task": routing.IMPORT_VERSIONS,
            "schedule": crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
            ),
            "kwargs": {"comment": "scheduled version import"},
        }
    if s.sync_schedule:
        schedule["project-cache-sync"] = {
            "task": routing.SYNC_CACHE,
            "schedule": s.sync_schedule,
        }
    return schedule


def build(s: Settings) -> dict:
    """The Celery settings for `s`, as a dict of lowercase names (nothing is created)."""
    return {
        "broker_url": s.broker_url,
        "broker_transport": s.broker_transport,
        "broker_transport_options": _transport_options(s),
        "broker_connection_retry_on_startup": True,
        "result_backend": s.result_backend,
        # A sentinel:// result backend: the master's name and the sentinels' credentials.
        "result_backend_transport_options": s.result_backend_transport_options,
        # Its engines get our psycopg connect arguments (a pooler: no prepared statements).
        "database_engine_options": result_engine_options(s.result_backend, s.database_pooler),
        "result_expires": 24 * 3600,
        "result_extended": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Classic: every queue as Celery declares it by default (a direct exchange and a
        # routing key of its name), so a plain client's `celery` queue matches ours exactly.
        # Quorum (CACHEWORK_QUEUE_TYPE): see worker/queue_types.py.
        "task_queues": declared_queues(s),
        "task_default_queue": "cache",
        "task_default_exchange": "cache",
        "task_default_routing_key": "cache",
        "task_routes": ("cachework.worker.routing.route_task",),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": s.task_soft_time_limit,
        "task_time_limit": s.task_time_limit,
        # Celery's soft shutdown: running tasks get this long on a cold shutdown (README
        # "Kubernetes": SIGTERM, terminationGracePeriodSeconds and the task time limits).
        "worker_soft_shutdown_timeout": s.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": s.soft_shutdown_on_idle,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": _beat_schedule(s),
        "beat_schedule_filename": str(s.data_dir / "celerybeat-schedule"),
        "beat_scheduler": "cachework.worker.beat:PersistentScheduler",
        **queue_type_settings(s),
    }
