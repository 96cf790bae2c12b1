"""Our logging set-up; Celery's root-logger hijack is off (`worker_hijack_root_logger`).

CACHEWORK_LOG_FORMAT=text (default) or json: one JSON object per line, with the task's
name and id when the record was logged by (or about) a task, and a record's `fields`
(`extra={"fields": {...}}`). With json, Celery's plain-text start-up banner is replaced by
one record carrying its facts (`banner_fields`, worker/lifecycle.py). Expected errors of bad input
(`EXPECTED_ERRORS`, named in each task's `throws`) are logged by Celery as one WARNING
line without a traceback; any other exception keeps its ERROR line and traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from cachework.errors import ChangeLimitExceeded, ConfigError, NotFoundError, ValidationError

FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s"
# A task's `throws`: bad input or configuration, said in one line (no traceback).
EXPECTED_ERRORS = (ValidationError, NotFoundError, ConfigError, ChangeLimitExceeded)


def most_verbose(*levels: str | int | None) -> int:
    """The most verbose of `levels` (names or numbers; None ignored), as a number.

    Celery always passes a level (`-l`, default WARNING) and cannot say whether the user
    chose it, so the worker logs at the more verbose of `-l` and CACHEWORK_LOG_LEVEL."""
    numbers = [
        logging.getLevelName(level.upper()) if isinstance(level, str) else level
        for level in levels
        if level is not None
    ]
    numbers = [n for n in numbers if isinstance(n, int)]
    return min(numbers) if numbers else logging.INFO


def expected_errors_at_warning() -> None:
    """Celery logs a task's `throws` ("raised expected") at INFO; we want WARNING, still
    one line without a traceback (Celery's own policy table, so idempotent)."""
    from celery.app import trace

    policy = trace.log_policy_expected
    if policy.severity != logging.WARNING:
        trace.log_policy_expected = policy._replace(severity=logging.WARNING)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, the task's name
    and id (when known) and the traceback (when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "process_name": record.processName,
            "message": record.getMessage(),
        }
        data.update(_task_of(record))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update({k: v for k, v in fields.items() if k not in data})
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def banner_fields(worker: Any) -> dict:
    """The facts of Celery's start-up banner (node, app, broker and results with their
    passwords masked, pool, concurrency, task events, queues), as `extra` of one log
    record: `{"fields": {...}}`. A fact that cannot be read is left out."""
    app = worker.app
    facts: dict[str, Any] = {"node": worker.hostname, "app": app.main}
    readers = {
        "transport": lambda: app.connection_for_write().as_uri(),
        "results": lambda: app.backend.as_uri(),
        "pool": lambda: getattr(worker.pool_cls, "__module__", str(worker.pool_cls)),
        "concurrency": lambda: worker.concurrency,
        "task_events": lambda: bool(worker.task_events),
        "queues": lambda: sorted(app.amqp.queues.consume_from),
    }
    for name, read in readers.items():
        with contextlib.suppress(Exception):
            facts[name] = read()
    return {"fields": facts}


def json_console() -> None:
    """With JSON logs, what Celery writes past the logging module is JSON too: warnings
    (its superuser warning) go through logging, and the lines it writes straight to the
    console from signal handlers (`worker: Warm shutdown (MainProcess)`) are records."""
    logging.captureWarnings(True)
    from celery.apps import worker as celery_worker

    celery_worker.safe_say = _say_json


def _say_json(msg: str, f: Any = sys.__stderr__) -> None:
    """Celery's `safe_say` (called in signal handlers: one os.write, no logging locks), as
    one JSON record."""
    import os

    record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, msg, None, None)
    line = JsonFormatter().format(record) + "\n"
    with contextlib.suppress(Exception):
        os.write(f.fileno(), line.encode())


def _task_of(record: logging.LogRecord) -> dict:
    """The task name and id: from Celery's own log context (received, succeeded, raised)
    or from the task running in this process."""
    context = getattr(record, "data", None)
    if isinstance(context, dict) and context.get("id") and context.get("name"):
        return {"task_name": context["name"], "task_id": context["id"]}
    try:
        from celery._state import get_current_task
    except ImportError:  # pragma: no cover - Celery is a dependency
        return {}
    task = get_current_task()
    task_id = getattr(getattr(task, "request", None), "id", None) if task else None
    return {"task_name": task.name, "task_id": task_id} if task_id else {}


def configure_logging(
    level: str | int = "INFO", logfile: str | None = None, fmt: str = "text"
) -> None:
    """One handler on the root logger (stderr, or `logfile`); idempotent."""
    root = logging.getLogger()
    if not any(getattr(h, "_cachework", False) for h in root.handlers):
        handler: logging.Handler = (
            logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
        )
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
        handler._cachework = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
