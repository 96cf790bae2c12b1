"""Liveness and readiness of a deployment: what `cachework health` and a worker node's
`/ready` endpoint report, as short lines naming what is wrong (none: healthy).

Liveness: the database, Redis (when configured) and the broker can be reached.
Readiness: liveness, plus Redis (invalidations, locks, a Redis broker) may not evict
cachework's keys (`cache/redis_policy.py`), a cachework worker answers and no worker
child's invalidation listener has been cut off from the log longer than
CACHEWORK_LISTENER_STALE_AFTER. Each
node's main process answers the remote-control command `cachework_listeners` with the
state of its children's listeners, read from the node's metrics folder (every child
writes its listener's last contact there, see cache/metrics.py).
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery.worker.control import control_command

from cache import health, metrics, redis_policy
from cache.errors import CacheworkError
from cache.settings import Settings
from worker.checks import check_broker

COMMAND = "cachework_listeners"


def broker_problem(settings: Settings, timeout: float = 3.0) -> str | None:
    try:
        check_broker(settings, timeout)
    except CacheworkError as exc:
        return f"broker unreachable: {exc}"
    return None


def liveness(settings: Settings, timeout: float = 3.0) -> list[str]:
    """The database, Redis and the broker answer, checked in that order."""
    problems = [
        health.check_database(settings.database_url, timeout),
        health.check_redis(settings.redis_url, timeout),
        broker_problem(settings, timeout),
    ]
    return [p for p in problems if p]


def node_listeners(stale_after: float, folder: str | None = None) -> dict:
    """In a worker node's main process: its children's listeners and the problems among
    them, judged with this node's own clock and stale bound."""
    folder = folder or metrics.multiprocess_dir()
    states = health.listeners(folder) if folder else {}
    now = time.time()
    return {
        "pid": os.getpid(),
        "stale_after": stale_after,
        "listeners": {
            str(pid): {
                "connected": bool(state.get("connected")),
                "away": round(now - state["last_contact"], 3) if "last_contact" in state else None,
            }
            for pid, state in states.items()
        },
        "problems": health.listener_problems(states, stale_after, now),
    }


@control_command(name=COMMAND)
def _cachework_listeners(state, **_kwargs) -> dict:
    """Remote control (runs in the node's main process): its children's listeners."""
    runtime = getattr(state.consumer.app, "runtime", None)
    stale_after = runtime.settings.listener_stale_after if runtime is not None else 30.0
    return node_listeners(stale_after)


def workers_problems(app: Celery, timeout: float = 3.0) -> list[str]:
    """Ask every cachework node for its listeners: a line when none answers, and one per
    listener cut off too long."""
    replies = app.control.broadcast(COMMAND, reply=True, timeout=timeout) or []
    nodes = {
        node: answer
        for reply in replies
        for node, answer in reply.items()
        if isinstance(answer, dict) and "listeners" in answer
    }
    if not nodes:
        return [f"no cachework worker answered within {timeout:g}s"]
    return [f"worker {node} {line}" for node, reply in nodes.items() for line in reply["problems"]]


def readiness(settings: Settings, app: Celery, timeout: float = 3.0) -> list[str]:
    problems = liveness(settings, timeout)
    problems = problems or redis_policy.eviction_problems(settings, broker=True, timeout=timeout)
    return problems or workers_problems(app, timeout)
