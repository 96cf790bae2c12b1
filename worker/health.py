"""Liveness and readiness of a deployment: what `cachework health` and a worker node's
`/ready` endpoint report, as short lines naming what is wrong (none: healthy).

Liveness (`--liveness`): the database, Redis (when configured) and the broker can be
reached; from any host, so it is about the services, not a process (a Kubernetes liveness
probe is `/live` or `--live`, which depend on the node alone: see worker/probes.py).
Readiness: the same, plus Redis (invalidations, locks, a Redis broker) may not evict
cachework's keys (`cachework/redis_policy.py`), a cachework worker answers and no worker
child's invalidation listener has been cut off from the log longer than
CACHEWORK_LISTENER_STALE_AFTER. Each
node's main process answers the remote-control command `cachework_listeners` with the
state of its children's listeners, read from the node's metrics folder (every child
writes its listener's last contact there, see worker/metrics.py).

The checks run in parallel (`worker.probes.Checks`) and the answer comes when the last one
is in, or at `timeout`: a healthy deployment answers in milliseconds, not in `timeout`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from celery import Celery
from celery.worker.control import control_command

from cachework.errors import CacheworkError
from cachework.settings import Settings
from worker.probes import run_checks

COMMAND = "cachework_listeners"
# Seconds to wait for more nodes' answers once one has answered: every node answers the
# same broadcast within milliseconds of the others (its main process does, from a file);
# waiting out the whole timeout made a healthy `cachework health` take 4 s. A node slower
# than that by more than QUIET is left out of that answer.
QUIET = 0.2
# Seconds past `timeout` a command waits for a check that bounds itself by `timeout`, so
# the line says what timed out (a connection, no worker) rather than only which check.
GRACE = 0.5


# The checks import their clients when they run, each in its own thread: SQLAlchemy and
# the database driver load while the broker's answer is awaited (`cachework health` runs
# in a new process every time, and the kubelet waits 1 s by default).


def database_problem(settings: Settings, timeout: float = 3.0) -> str | None:
    from worker.process_health import check_database

    return check_database(settings.database_url, timeout)


def redis_problems(settings: Settings, timeout: float = 3.0, eviction: bool = True) -> list[str]:
    """Redis (when configured) answers, and (`eviction`) no Redis of ours, the broker's
    included, may evict cachework's keys now."""
    from cachework.redis_policy import eviction_problems
    from worker.process_health import check_redis

    down = check_redis(settings.redis_url, timeout)
    if down or not eviction:
        return [down] if down else []
    return eviction_problems(settings, broker=True, timeout=timeout)


def broker_problem(settings: Settings, timeout: float = 3.0) -> str | None:
    from worker.checks import check_broker

    try:
        check_broker(settings, timeout)
    except CacheworkError as exc:
        return f"broker unreachable: {exc}"
    return None


def liveness(settings: Settings, timeout: float = 3.0) -> list[str]:
    """The database, Redis and the broker answer (checked in parallel, within `timeout`)."""
    return run_checks(
        {
            "database": lambda: database_problem(settings, timeout),
            "Redis": lambda: redis_problems(settings, timeout, eviction=False),
            "broker": lambda: broker_problem(settings, timeout),
        },
        timeout + GRACE,
    )


def node_listeners(stale_after: float, folder: str | None = None) -> dict:
    """In a worker node's main process: its children's listeners and the problems among
    them, judged with this node's own clock and stale bound."""
    from worker import metrics
    from worker import process_health as health

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


def collect_nodes(app: Celery, timeout: float = 3.0, quiet: float = QUIET) -> dict[str, dict]:
    """Every cachework node's answer to `cachework_listeners`: node -> answer. Waits up to
    `timeout` for the first answer, then `quiet` seconds for the others: a healthy
    deployment answers in about `quiet`, not `timeout`. One broadcast, collected in a
    thread of its own on a connection of its own, left to end by itself (kombu collects
    replies until none came for a whole `timeout`; a second broadcast on the same
    connection would lose its replies on Redis)."""
    replies: list[dict] = []
    answered = threading.Event()

    def on_reply(body: dict) -> None:
        replies.append(body)
        answered.set()

    def broadcast() -> None:
        with contextlib.suppress(Exception), app.connection_for_write() as conn:
            app.control.broadcast(
                COMMAND, reply=True, timeout=timeout, callback=on_reply, connection=conn
            )
        answered.set()  # every answer is in, or none will come

    deadline = time.monotonic() + timeout
    collector = threading.Thread(target=broadcast, name="cachework-health-collect", daemon=True)
    collector.start()
    answered.wait(timeout)
    if replies:
        collector.join(min(quiet, max(0.0, deadline - time.monotonic())))
    return {
        node: answer
        for reply in list(replies)
        for node, answer in reply.items()
        if isinstance(answer, dict) and "listeners" in answer
    }


def workers_problems(app: Celery, timeout: float = 3.0) -> list[str]:
    """Ask every cachework node for its listeners: a line when none answers within
    `timeout`, and one per listener cut off too long."""
    nodes = collect_nodes(app, timeout)
    if not nodes:
        return [f"no cachework worker answered within {timeout:g}s"]
    return [f"worker {node} {line}" for node, reply in nodes.items() for line in reply["problems"]]


def readiness(settings: Settings, app: Celery, timeout: float = 3.0) -> list[str]:
    """Liveness, Redis's eviction policy and the workers' listeners, in parallel (the
    workers asked while the broker is checked), the answer as soon as all are in: at most
    `timeout`, plus a moment for a check's own line about its timeout."""
    problems = run_checks(
        {
            "database": lambda: database_problem(settings, timeout),
            "Redis": lambda: redis_problems(settings, timeout),
            "broker": lambda: broker_problem(settings, timeout),
            "workers": lambda: workers_problems(app, timeout),
        },
        timeout + GRACE,
    )
    if any(line.startswith("broker unreachable") for line in problems):
        # No worker can answer through a broker that cannot be reached: one line says it.
        problems = [line for line in problems if not line.startswith("no cachework worker")]
    return problems


def control_app(settings: Settings) -> Celery:
    """A Celery app that only talks to the workers (remote control): the same broker and
    options as `worker.create_app`, without its runtime, tasks and imports (a probe that
    runs in a process of its own answers in well under a second)."""
    import celeryconfig

    app = Celery("cachework", set_as_current=False)
    app.conf.update(celeryconfig.build(settings))
    return app
