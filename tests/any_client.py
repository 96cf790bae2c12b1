"""A web app's Celery client, as the README shows it: it imports `celery` and nothing of
cachework except, when routing, the one module the routing line names (by string).

Run by tests/test_any_client.py as a separate process:

    python tests/any_client.py BROKER BACKEND (routed|plain) CALLS

CALLS is a JSON list of [task name, kwargs]. Every task is sent first, then every result
is collected; the output is one JSON object: {"results": [{"name", "value" or "error",
"worker"}], "modules": [the cachework modules this process imported]}.
"""

import json
import sys
import time

from celery import Celery

FORBIDDEN = (
    "cachework.worker.celery_app",
    "celeryconfig",
    "tasks",
    "cache",
    "importers",
    "sqlalchemy",
)


def main() -> None:
    broker, backend, mode, calls = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    celery = Celery(broker=broker, backend=backend)
    if mode == "routed":
        celery.conf.task_routes = ("cachework.worker.routing.route_task",)
    sent = [(name, celery.send_task(name, kwargs=kwargs)) for name, kwargs in calls]
    results = []
    deadline = time.monotonic() + 30  # for all results together
    for name, result in sent:
        try:
            value = result.get(timeout=max(0.1, deadline - time.monotonic()), interval=0.05)
        except Exception as exc:  # reported, so the test can say which task failed
            results.append({"name": name, "error": f"{exc.__class__.__name__}: {exc}"})
            continue
        results.append({"name": name, "value": value, "worker": result.worker})
    celery.close()
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("cachework", *FORBIDDEN))
    print(json.dumps({"results": results, "modules": ours}))


if __name__ == "__main__":
    main()
