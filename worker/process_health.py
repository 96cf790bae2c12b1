"""Old names of a process's health facts (was `cache/health.py`), kept for code written
against them: the checks are in `worker/checks.py`, liveness and readiness in
`worker/health.py`. New code imports from those."""

from __future__ import annotations

from cachework.worker.checks import database_problem as check_database
from cachework.worker.checks import redis_problem as check_redis
from cachework.worker.health import (
    CONNECTED,
    LAST_CONTACT,
    alive,
    cut_off,
    listener_problems,
    listeners,
    multiprocess_metrics,
    runtime_listener,
)
from cachework.worker.health import process_readiness as readiness

__all__ = [
    "CONNECTED",
    "LAST_CONTACT",
    "alive",
    "check_database",
    "check_redis",
    "cut_off",
    "listener_problems",
    "listeners",
    "multiprocess_metrics",
    "readiness",
    "runtime_listener",
]
