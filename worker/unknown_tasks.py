"""Say what to do when a task this worker does not know reaches it.

Celery logs "Received unregistered task" and drops the message (rejected, marked failed in
the result backend). That is the usual sign of a broker shared with the app's own Celery
workers while cachework still consumes Celery's default queue `celery`, or of a client
that routes its own tasks to cachework's queues. Importing this module connects a
`task_unknown` handler that logs the task's name, where it came from and the fix.
"""

from __future__ import annotations

import logging

from cachework.worker.routing import DEFAULT_QUEUE, PREFIX, QUEUES, ROUTING_LINE

log = logging.getLogger(__name__)


def _consumed(consumer) -> set[str]:
    """Names of the queues this worker consumes ('?' when it cannot tell)."""
    try:
        return {queue.name for queue in consumer.task_consumer.queues}
    except AttributeError:
        return set()


def _shared_broker(consumer) -> bool | None:
    """The worker app's CACHEWORK_SHARED_BROKER (None when it cannot tell)."""
    runtime = getattr(getattr(consumer, "app", None), "runtime", None)
    return runtime.settings.shared_broker if runtime is not None else None


def explain(name: str, queue: str | None, consumed: set[str], shared: bool | None) -> str:
    """The log line for unknown task `name` that came on `queue`."""
    head = (
        f"task {name!r} is not a cachework task: this worker dropped it (Celery rejected "
        f"the message and marked it failed in cachework's result backend)"
    )
    if name.startswith(PREFIX):
        return (
            f"task {name!r} is unknown to this cachework worker: it was dropped; the client "
            "and the worker probably run different versions of cachework"
        )
    if queue == DEFAULT_QUEUE or (queue is None and DEFAULT_QUEUE in consumed):
        if shared:
            why = (
                f"this worker consumes Celery's default queue {DEFAULT_QUEUE!r} because it "
                f"was started with -Q naming it although CACHEWORK_SHARED_BROKER is on; "
                f"leave {DEFAULT_QUEUE!r} out of -Q (or omit -Q) so your own workers get it"
            )
        else:
            why = (
                f"this worker consumes Celery's default queue {DEFAULT_QUEUE!r} because "
                "CACHEWORK_SHARED_BROKER is off (a broker dedicated to cachework); if your own "
                "Celery workers share this broker, set CACHEWORK_SHARED_BROKER=1 on cachework "
                f"workers (they then leave {DEFAULT_QUEUE!r} to yours) and route cachework "
                f"tasks in your client with {ROUTING_LINE}; otherwise give your own tasks a "
                "broker (or a virtual host or Redis db number) of their own"
            )
        return f"{head}; {why}"
    if queue in QUEUES:
        return (
            f"{head}; it came on cachework's queue {queue!r}, where only {PREFIX}* tasks "
            f"belong: fix the sending client's task_routes ({ROUTING_LINE} routes "
            f"{PREFIX}* tasks only)"
        )
    return (
        f"{head}; it came on queue {queue!r}: only {PREFIX}* tasks belong on the queues a "
        f"cachework worker consumes ({', '.join(sorted(consumed)) or '?'})"
    )


def report(consumer, message, name) -> None:
    """Log why the unknown task `name` (its `message`) reached `consumer`'s worker."""
    delivery = getattr(message, "delivery_info", None) or {}
    queue = delivery.get("routing_key") or None
    log.error("%s", explain(str(name), queue, _consumed(consumer), _shared_broker(consumer)))
