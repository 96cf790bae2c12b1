"""The metrics exporter of a worker node: `python -m worker.exporter FOLDER PARENT NODE`.

Started by the node's main process (`worker/node_metrics.py`) when CACHEWORK_METRICS_PORT
is set, so that process (which forks the pool) runs no server thread. It serves on
CACHEWORK_METRICS_BIND:CACHEWORK_METRICS_PORT

- `/metrics`: the sum over the node's processes of what they wrote to FOLDER;
- `/live`: the database, Redis and the broker answer, and the node's main process runs;
- `/ready`: live, plus Redis may not evict cachework's keys (its policy can change at run
  time), the node answers ping and none of its children's invalidation listeners has
  been cut off longer than CACHEWORK_LISTENER_STALE_AFTER.

It prints one line, `listening on ...` or why it cannot, and ends when its parent does.
"""

from __future__ import annotations

import os
import sys
import time

from cache import health, metrics, redis_policy
from cache.errors import CacheworkError
from cache.settings import load_settings


def main(argv: list[str]) -> int:
    folder, parent, node = argv[0], int(argv[1]), argv[2]
    try:
        settings = load_settings()
    except CacheworkError as exc:
        print(f"metrics exporter: {exc}", flush=True)
        return 2
    app = None

    def live() -> list[str]:
        from worker.health import liveness

        problems = [] if health.alive(parent) else [f"worker {node}: main process {parent} is gone"]
        return problems + liveness(settings, timeout=2.0)

    def ready() -> list[str]:
        nonlocal app
        problems = live()
        if not problems:
            problems = redis_policy.eviction_problems(settings, broker=True, timeout=2.0)
        if not any(p.startswith("broker") for p in problems):
            if app is None:
                from worker.celery_app import create_app

                app = create_app(settings)
            replies = app.control.ping(destination=[node], timeout=2.0) or []
            if not any(node in reply for reply in replies):
                problems.append(f"worker {node} did not answer ping within 2s")
        states = health.listeners(folder)
        return problems + [
            f"worker {node} {line}"
            for line in health.listener_problems(states, settings.listener_stale_after)
        ]

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
