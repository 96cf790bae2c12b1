"""Liveness and readiness of a process, a worker node and a deployment, as short lines
naming what is wrong (none: healthy).

Liveness is "restart this": it depends on the process alone, never on a service every pod
shares (an outage of Redis or PostgreSQL would restart every pod at once and fix
nothing). A process is live when its server answers (`process_live`), a worker node when
its main process runs (`node_live`). `liveness(settings)` (`cachework health
--liveness`) asks the services instead, from any host.

Readiness is "send this work": one recipe (`readiness_checks`) for all three. The
database and Redis answer, Redis may not evict cachework's keys (its policy can change at
run time), the broker answers (a node, a deployment), and the invalidation listeners were
in touch with the log within CACHEWORK_LISTENER_STALE_AFTER: this process's
(`process_readiness`), a node's children's, read from the node's metrics folder where
every child writes its listener's last contact (the exporter), or every node's, asked
with the remote-control command `cachework_listeners` (`readiness`, `cachework health`),
sent to cachework's nodes only (a shared broker's other workers never see it).
The checks run in parallel (`cachework.worker.probes.Checks`): a healthy answer takes milliseconds,
not the timeout.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from celery import Celery

from cachework.worker import celery_settings
from cachework.worker.checks import broker_problem, database_problem, redis_problems
from cachework.worker.probes import Check, Checks, run_checks

if TYPE_CHECKING:
    from cachework.settings import Settings
    from cachework.worker.runtime import Runtime

COMMAND = "cachework_listeners"
# The key a cachework node adds to its answer to Celery's `stats` (lifecycle.NodeMarker):
# how `cachework health` tells cachework's workers from another app's on a shared broker.
MARKER = "cachework_node"
LAST_CONTACT = "cachework_invalidation_listener_last_contact_timestamp_seconds"
CONNECTED = "cachework_invalidation_listener_connected"
# Seconds to wait for more workers' answers to `stats` once one has answered: every node
# answers the same broadcast within milliseconds of the others; waiting out the whole
# timeout made a healthy `cachework health` take 4 s. A node slower than that by more
# than QUIET is left out of that answer.
QUIET = 0.2
# Seconds past `timeout` a command waits for a check that bounds itself by `timeout`, so
# the line says what timed out (a connection, no worker) rather than only which check.
GRACE = 0.5


# --- liveness ----------------------------------------------------------------------------------


def process_live() -> list[str]:
    """A process serving its own probes is live: its server's thread answering is all."""
    return []


def node_live(parent: int, node: str) -> list[str]:
    """A worker node is live while its main process runs."""
    return [] if alive(parent) else [f"worker {node}: main process {parent} is gone"]


def liveness(settings: Settings, timeout: float = 3.0) -> list[str]:
    """The database, Redis and the broker answer (checked in parallel, within `timeout`)."""
    return run_checks(
        {
            "database": lambda: database_problem(settings.database_url, timeout),
            "Redis": lambda: redis_problems(settings, timeout, eviction=False),
            "broker": lambda: broker_problem(settings, timeout),
        },
        timeout + GRACE,
    )


# --- readiness ---------------------------------------------------------------------------------


def readiness_checks(
    settings: Settings, timeout: float, listeners: dict[str, Check], broker: Check | None = None
) -> dict[str, Check]:
    """What readiness checks: the database, Redis and its eviction policy (the broker's
    too when `broker` is checked), `broker`, then `listeners` (name -> check)."""
    checks: dict[str, Check] = {
        "database": lambda: database_problem(settings.database_url, timeout),
        "Redis": lambda: redis_problems(settings, timeout, broker=broker is not None),
    }
    if broker is not None:
        checks["broker"] = broker
    return {**checks, **listeners}


def process_readiness(
    runtime: Runtime, timeout: float = 3.0, checks: Checks | None = None
) -> list[str]:
    """A web process's readiness: its services, and its own listener."""
    named = readiness_checks(
        runtime.settings, timeout, {"listener": lambda: runtime_listener(runtime)}
    )
    return (checks or Checks(timeout + GRACE)).run(named)


def readiness(settings: Settings, app: Celery, timeout: float = 3.0) -> list[str]:
    """A deployment's readiness: its services, the broker, and every worker node's
    listeners (asked while the broker is checked), the answer as soon as all are in: at
    most `timeout`, plus a moment for a check's own line about its timeout."""
    named = readiness_checks(
        settings,
        timeout,
        {"workers": lambda: workers_problems(app, timeout)},
        broker=lambda: broker_problem(settings, timeout),
    )
    problems = run_checks(named, timeout + GRACE)
    if any(line.startswith("broker unreachable") for line in problems):
        # No worker can answer through a broker that cannot be reached: one line says it.
        problems = [line for line in problems if not line.startswith("no cachework worker")]
    return problems


# --- listeners -----------------------------------------------------------------------------------


def cut_off(last_contact: float | None, stale_after: float, now: float) -> float | None:
    """Seconds a listener has been out of touch, when that is longer than `stale_after`."""
    if last_contact is None:
        return None
    away = now - last_contact
    return away if away > stale_after else None


def runtime_listener(runtime: Runtime, now: float | None = None) -> list[str]:
    """This process's listener, if it has one, was in touch within the stale bound."""
    if runtime._tracker is None:
        return []
    sampler = runtime.sampler
    sampler.sync()
    stale_after = runtime.settings.listener_stale_after
    away = cut_off(sampler.last_contact, stale_after, now or time.time())
    if away is None and runtime.listening:
        return []
    if away is None:
        return [f"pid {os.getpid()}: invalidation listener not running"]
    return [_cut_off_line(os.getpid(), away, stale_after)]


def _cut_off_line(pid: int | str, away: float, stale_after: float) -> str:
    return (
        f"pid {pid}: invalidation listener cut off from the log for {away:.1f}s "
        f"(CACHEWORK_LISTENER_STALE_AFTER={stale_after:g})"
    )


def listeners(folder: str) -> dict[int, dict[str, float]]:
    """The listener of every live process writing to the multiprocess `folder`: pid ->
    {"connected", "last_contact"}. Processes gone (killed before they could say so) are
    marked dead and left out."""
    from prometheus_client import multiprocess

    found: dict[int, dict[str, float]] = {}
    if not os.path.isdir(folder):
        return found
    for metric in multiprocess_metrics(folder):
        if metric.name not in (LAST_CONTACT, CONNECTED):
            continue
        for sample in metric.samples:
            pid = int(sample.labels.get("pid", 0))
            key = "last_contact" if metric.name == LAST_CONTACT else "connected"
            found.setdefault(pid, {})[key] = sample.value
    for pid in list(found):
        if not alive(pid):
            multiprocess.mark_process_dead(pid, folder)
            del found[pid]
    return found


def multiprocess_metrics(folder: str) -> list:
    from prometheus_client import multiprocess

    files = glob.glob(os.path.join(folder, "gauge_liveall_*.db"))
    return list(multiprocess.MultiProcessCollector.merge(files, accumulate=False))


def listener_problems(
    states: dict[int, dict[str, float]], stale_after: float, now: float | None = None
) -> list[str]:
    """A line for every listener out of touch longer than `stale_after`."""
    now = time.time() if now is None else now
    problems = []
    for pid, state in sorted(states.items()):
        away = cut_off(state.get("last_contact"), stale_after, now)
        if away is not None:
            problems.append(_cut_off_line(pid, away, stale_after))
    return problems


def node_listeners(stale_after: float, folder: str | None) -> dict:
    """A worker node's answer to `cachework_listeners`: its children's listeners (read
    from its metrics `folder`) and the problems among them, judged with this node's own
    clock and stale bound."""
    states = listeners(folder) if folder else {}
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
        "problems": listener_problems(states, stale_after, now),
    }


def alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the workers of a deployment -----------------------------------------------------------------


def collect_nodes(app: Celery, timeout: float = 3.0, quiet: float = QUIET) -> dict[str, dict]:
    """Every cachework node's answer to `cachework_listeners`: node -> answer, within
    about `timeout`. The command goes to cachework's nodes only (`destination`, found by
    `cachework_nodes`): a worker of another app on a shared broker would log an unknown
    command as an error with a traceback. It returns as soon as every one has answered."""
    deadline = time.monotonic() + timeout
    nodes = cachework_nodes(app, timeout, quiet)
    if not nodes:
        return {}
    left = max(0.05, deadline - time.monotonic())
    with contextlib.suppress(Exception), app.connection_for_write() as conn:
        replies = app.control.broadcast(
            COMMAND, destination=nodes, reply=True, timeout=left, limit=len(nodes), connection=conn
        )
        return {
            node: answer
            for reply in replies or []
            for node, answer in reply.items()
            if isinstance(answer, dict) and "listeners" in answer
        }
    return {}


GRACE = 1.5  # seconds a cachework node may answer after a quicker foreign worker


def cachework_nodes(app: Celery, timeout: float = 3.0, quiet: float = QUIET) -> list[str]:
    """The node names of the cachework workers on the broker. Every Celery worker answers
    the built-in `stats` (a foreign one without a word in its log); a cachework node's
    carries `MARKER` (worker/lifecycle.py `NodeMarker`). How many workers there are is
    not known: waits up to `timeout` for the first cachework answer (a foreign worker's,
    however quick, starts no count), then `quiet` for the others."""
    return sorted(
        node
        for reply in _gather(app, "stats", timeout, quiet, wanted=_marked)
        for node, answer in reply.items()
        if isinstance(answer, dict) and MARKER in answer
    )


def _marked(reply: dict) -> bool:
    return any(isinstance(answer, dict) and MARKER in answer for answer in reply.values())


def _gather(
    app: Celery,
    command: str,
    timeout: float,
    quiet: float,
    wanted: Callable[[dict], bool] = lambda _reply: True,
) -> list[dict]:
    """The replies to a broadcast of the built-in `command` that came within `timeout` of
    it and `quiet` of the first `wanted` one; when the first answers are not wanted (a
    foreign worker is quicker), a wanted one is waited for `GRACE` more. Collected in a
    thread of its own on a connection of its own, left to end by itself (kombu collects
    replies until none came for a whole `timeout`); a later broadcast from another thread
    has a reply queue of its own."""
    replies: list[dict] = []
    answered, wanted_answered = threading.Event(), threading.Event()

    def on_reply(body: dict) -> None:
        replies.append(body)
        answered.set()
        if wanted(body):
            wanted_answered.set()

    def broadcast() -> None:
        with contextlib.suppress(Exception), app.connection_for_write() as conn:
            app.control.broadcast(
                command, reply=True, timeout=timeout, callback=on_reply, connection=conn
            )
        answered.set()  # every answer is in, or none will come
        wanted_answered.set()

    deadline = time.monotonic() + timeout

    def left(at_most: float) -> float:
        return min(at_most, max(0.0, deadline - time.monotonic()))

    collector = threading.Thread(target=broadcast, name="cachework-health-collect", daemon=True)
    collector.start()
    answered.wait(timeout)
    if replies:
        wanted_answered.wait(left(GRACE))
        collector.join(left(quiet))
    return list(replies)


def workers_problems(app: Celery, timeout: float = 3.0) -> list[str]:
    """Ask every cachework node for its listeners: a line when none answers within
    `timeout`, and one per listener cut off too long."""
    nodes = collect_nodes(app, timeout)
    if not nodes:
        return [f"no cachework worker answered within {timeout:g}s"]
    return [f"worker {node} {line}" for node, reply in nodes.items() for line in reply["problems"]]


def control_app(settings: Settings) -> Celery:
    """A Celery app that only talks to the workers (remote control): the same broker and
    options as `worker.create_app`, without its runtime, tasks and imports (a probe that
    runs in a process of its own answers in well under a second)."""
    app = Celery("cachework", set_as_current=False)
    app.conf.update(celery_settings.build(settings))
    return app
