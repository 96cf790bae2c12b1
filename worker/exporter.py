"""The metrics exporter of a worker node: `python -m worker.exporter FOLDER PARENT NODE`.

Started by the node's main process (`worker/node_metrics.py`) when CACHEWORK_METRICS_PORT
is set, so that process (which forks the pool) runs no server thread. It serves on
CACHEWORK_METRICS_BIND:CACHEWORK_METRICS_PORT

- `/metrics`: the sum over the node's processes of what they wrote to FOLDER;
- `/live`: the node's main process runs (and this server answers). Nothing else: a
  liveness probe that failed when Redis or PostgreSQL did would restart every pod of an
  outage at once (README "Kubernetes");
- `/ready`: the database, Redis (and that it may not evict cachework's keys: its policy
  can change at run time) and the broker answer, the node answers ping and none of its
  children's invalidation listeners has been cut off longer than
  CACHEWORK_LISTENER_STALE_AFTER. The checks run in parallel and the answer comes within
  `worker.probes.READY_TIMEOUT` (0.8 s), a check still hanging (a frozen Redis) named.

It prints one line, `listening on ...` or why it cannot, and ends when its parent does.
"""

from __future__ import annotations

import os
import sys
import time

from cachework.errors import CacheworkError
from cachework.settings import load_settings
from worker import metrics
from worker import process_health as health
from worker.health import broker_problem, control_app, database_problem, redis_problems
from worker.probes import READY_TIMEOUT, Checks


def main(argv: list[str]) -> int:
    folder, parent, node = argv[0], int(argv[1]), argv[2]
    try:
        settings = load_settings()
    except CacheworkError as exc:
        print(f"metrics exporter: {exc}", flush=True)
        return 2
    app = None
    checks = Checks(READY_TIMEOUT)
    wait = READY_TIMEOUT

    def live() -> list[str]:
        return [] if health.alive(parent) else [f"worker {node}: main process {parent} is gone"]

    def ping() -> list[str]:
        nonlocal app
        if app is None:
            app = control_app(settings)
        # Back as soon as the node answers (kombu already limits a broadcast to one
        # destination to one reply; said here, since the bound matters).
        replies = app.control.ping(destination=[node], timeout=wait, limit=1) or []
        if any(node in reply for reply in replies):
            return []
        return [f"worker {node} did not answer ping within {wait:g}s"]

    def broker() -> list[str]:
        down = broker_problem(settings, wait)
        return [down] if down else ping()

    def listeners() -> list[str]:
        states = health.listeners(folder)
        return [
            f"worker {node} {line}"
            for line in health.listener_problems(states, settings.listener_stale_after)
        ]

    def ready() -> list[str]:
        return live() + checks.run(
            {
                "database": lambda: database_problem(settings, wait),
                "Redis": lambda: redis_problems(settings, wait),
                "broker": broker,
                "listeners": listeners,
            }
        )

    def render() -> bytes:
        return metrics.exposition(metrics.multiprocess_registry(folder))

    port, bind = settings.metrics_port or 0, settings.metrics_bind
    try:
        server = metrics.MetricsServer(port, bind, render, ready, live).start()
    except OSError as exc:
        print(
            f"CACHEWORK_METRICS_PORT={port}: cannot listen on {bind}:{port}: {exc.strerror or exc}",
            flush=True,
        )
        return 2
    print(f"listening on http://{bind}:{server.port}/metrics", flush=True)
    try:
        while health.alive(parent) and os.getppid() == parent:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if app is not None:
            app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
