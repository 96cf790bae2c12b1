"""RabbitMQ queue types: the queues cachework declares, and one line when RabbitMQ refuses
one because it already exists with another type.

`CACHEWORK_QUEUE_TYPE=classic` (the default) declares every queue as before: classic,
with a direct exchange and routing key of its name, as Celery does by default.

`CACHEWORK_QUEUE_TYPE=quorum` declares every queue cachework consumes as a quorum queue
(`x-queue-type: quorum`: replicated, durable; no global QoS, no priorities, not exclusive,
not auto-delete; Celery's broadcast and remote-control queues stay classic auto-delete,
as they must). A retry's countdown cannot wait in the worker there: with per-consumer QoS
(Celery turns global QoS off for quorum queues) a held message keeps its prefetch slot
until its time comes, so a few retries waiting out their backoff would stop a node from
taking any other task. Celery's native delayed delivery sends such a message through
RabbitMQ's delay queues instead, which needs the queue's exchange to be a topic exchange.
Each queue therefore gets a topic exchange of its own, `<queue>.topic`, bound with
routing key `<queue>`; the direct exchanges of the classic set-up (and a client's own
declaration of `celery` or `cache`) keep working beside it, bound to the same queue.

RabbitMQ never changes the type of an existing queue: declaring it with another type is
refused (`PRECONDITION_FAILED - inequivalent arg 'x-queue-type'`), which killed the worker
with a traceback. `AMQP` (the app's amqp class) turns that into one line naming the queue,
its type and what to change: the worker exits with status 2; a client's publish raises a
ConfigError.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from amqp.exceptions import PreconditionFailed
from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Exchange, Queue

from cachework.errors import ConfigError
from cachework.settings import Settings
from cachework.worker.routing import queues

TOPIC_SUFFIX = ".topic"
QUORUM = {"x-queue-type": "quorum"}


def declared_queues(settings: Settings) -> tuple[Queue, ...]:
    """The queues a worker for `settings` declares and consumes (celeryconfig's
    `task_queues`)."""
    names = queues(settings.shared_broker)
    if settings.queue_type != "quorum":
        # Every queue as Celery declares it by default (a direct exchange and a routing
        # key of its name), so a plain client's `celery` queue matches ours exactly.
        return tuple(Queue(q, Exchange(q), routing_key=q) for q in names)
    return tuple(
        Queue(
            q,
            Exchange(q + TOPIC_SUFFIX, type="topic"),
            routing_key=q,
            queue_arguments=dict(QUORUM),
        )
        for q in names
    )


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery's settings for the queue type (merged into celeryconfig.build)."""
    if settings.queue_type != "quorum":
        return {}
    return {
        # Queues Celery makes itself (a task routed to a queue not declared here) and a
        # `celery` default queue made without task_queues: quorum too.
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        # Per-consumer prefetch (quorum queues have no global QoS); Celery's default,
        # stated because the worker relies on it.
        "worker_detect_quorum_queues": True,
        # Retries' countdowns wait in RabbitMQ's delay queues, not in the worker.
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' "
    r"in vhost '(?P<vhost>[^']*)': received (?P<received>.+?) but current is (?P<current>.+)$"
)
_VALUE = re.compile(r"'([^']*)'")


def _value(text: str) -> str | None:
    """'none' -> None; "the value 'quorum' of type 'longstr'" or "'classic'" -> the value."""
    text = text.strip()
    if text == "none":
        return None
    found = _VALUE.search(text)
    return found.group(1) if found else text


def describe_refusal(exc: BaseException, queue_type: str) -> str:
    """One line for RabbitMQ's refusal to declare a queue or exchange as cachework does."""
    text = str(getattr(exc, "reply_text", "") or exc)
    found = _INEQUIVALENT.search(text)
    if found is None:
        return f"RabbitMQ refused a declaration of cachework's: {text}"
    arg, kind, name, vhost = found.group("arg", "kind", "name", "vhost")
    current = _value(found.group("current"))
    if kind == "queue" and arg == "x-queue-type":
        other = "quorum" if queue_type == "classic" else "classic"
        if current not in (None, "classic", "quorum"):
            return (
                f"RabbitMQ queue {name!r} (vhost {vhost!r}) is a {current} queue, which "
                f"cachework does not use: delete it (rabbitmqctl -p {vhost} delete_queue "
                f"{name}) so it is declared again as {queue_type}"
            )
        return (
            f"RabbitMQ queue {name!r} (vhost {vhost!r}) is a {current or 'classic'} queue, "
            f"but CACHEWORK_QUEUE_TYPE is {queue_type}: set CACHEWORK_QUEUE_TYPE={other}, or "
            f"stop every worker, let the queue drain and delete it (rabbitmqctl -p {vhost} "
            f"delete_queue {name}) so it is declared again as {queue_type}"
        )
    received = _value(found.group("received"))
    return (
        f"RabbitMQ {kind} {name!r} (vhost {vhost!r}) exists with {arg}={current!r}, but "
        f"cachework declares it with {arg}={received!r} (CACHEWORK_QUEUE_TYPE={queue_type}): "
        f"delete the {kind} so it is declared again, or declare it as cachework does"
    )


class AMQP(CeleryAMQP):
    """Celery's amqp with RabbitMQ's refusal of a queue's type said in one line."""

    def _queue_type(self) -> str:
        runtime = getattr(self.app, "runtime", None)
        if runtime is not None:
            return runtime.settings.queue_type
        return str(self.app.conf.task_default_queue_type or "classic")

    def TaskConsumer(self, channel: Any, queues: Any = None, accept: Any = None, **kw: Any):
        """The worker's consumer; a queue of another type stops the worker with one line
        (exit status 2) instead of Celery's 'Unrecoverable error' traceback."""
        try:
            return super().TaskConsumer(channel, queues, accept, **kw)
        except PreconditionFailed as exc:
            sys.stderr.write(f"error: {describe_refusal(exc, self._queue_type())}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None

    def _create_task_sender(self):
        send = super()._create_task_sender()
        queue_type = self._queue_type

        def send_task_message(*args: Any, **kwargs: Any) -> Any:
            try:
                return send(*args, **kwargs)
            except PreconditionFailed as exc:
                raise ConfigError(describe_refusal(exc, queue_type())) from None

        return send_task_message
