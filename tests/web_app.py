"""A web app's process, as a plain script: no Celery, only cache/ and its own clients.

Driven line by line over stdin/stdout by tests/test_web_app.py, with the worker's
CACHEWORK_* environment. Each answer is one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import sqlalchemy as sa

from cachework.cache.invalidation import publish
from cachework.worker.runtime import start_runtime


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def name_of(runtime, key: int) -> str:
    return runtime.registry.table("categories").get(key)["name"]


def main() -> None:
    runtime = start_runtime()  # caught up and listening; no relay: the workers relay
    try:
        say(step="started", name=name_of(runtime, 1), listening=runtime.listening)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "write":  # the app's own change and its event, one transaction
                with runtime.database.session() as session:
                    session.execute(
                        sa.text("UPDATE categories SET name = :n WHERE id = 1"), {"n": argument}
                    )
                    publish("categories", [1], session=session)
                say(step="written")
            elif command == "until":  # the listener applies the relayed event (bounded)
                deadline = time.monotonic() + 20
                while name_of(runtime, 1) != argument and time.monotonic() < deadline:
                    time.sleep(0.05)
                say(step="until", name=name_of(runtime, 1))
            elif command == "barrier":  # an event a worker published: wait, then read
                runtime.wait_for(argument, timeout=20)
                say(step="barrier", name=name_of(runtime, 1))
            elif command == "modules":
                loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "tasks"))
                say(
                    step="modules",
                    loaded=loaded,
                    worker_app="cachework.worker.celery_app" in sys.modules,
                )
            elif command == "quit":
                break
    finally:
        runtime.close()
    say(step="stopped", listening=runtime.listening)


if __name__ == "__main__":
    main()
