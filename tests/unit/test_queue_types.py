"""CACHEWORK_QUEUE_TYPE: parsing, the queues and Celery settings it gives, and the one line
for RabbitMQ's refusal of a queue of the other type (real servers: test_topology_rabbitmq)."""

from __future__ import annotations

import pytest

from cachework.errors import ConfigError
from cachework.settings import load_settings
from cachework.worker.queue_types import describe_refusal

AMQP = "amqp://guest:secret@127.0.0.1:5672/v"


@pytest.mark.parametrize(
    ("raw", "broker", "expected"),
    [
        (None, "", "classic"),
        ("", AMQP, "classic"),
        ("classic", "redis://127.0.0.1:6379/0", "classic"),
        (" Quorum ", AMQP, "quorum"),
        ("quorum", "amqps://u:p@h:5671/v", "quorum"),
        ("quorum", "pyamqp://u:p@h//", "quorum"),
        ("quorum", "amqp://u:p@h1//;amqp://u:p@h2//", "quorum"),  # a failover list
    ],
)
def test_queue_type_setting(raw, broker, expected):
    env = {"CACHEWORK_BROKER_URL": broker} if broker else {}
    if raw is not None:
        env["CACHEWORK_QUEUE_TYPE"] = raw
    assert load_settings(env).queue_type == expected


@pytest.mark.parametrize("raw", ["stream", "quorom", "1", "classic,quorum"])
def test_a_bad_queue_type_is_a_config_error_naming_it(raw):
    with pytest.raises(ConfigError) as refused:
        load_settings({"CACHEWORK_QUEUE_TYPE": raw, "CACHEWORK_BROKER_URL": AMQP})
    assert str(refused.value) == f"CACHEWORK_QUEUE_TYPE={raw!r} is not one of classic, quorum"


@pytest.mark.parametrize("broker", ["", "redis://:secret@127.0.0.1:6379/0", "memory://"])
def test_quorum_needs_rabbitmq(broker):
    env = {"CACHEWORK_QUEUE_TYPE": "quorum"}
    if broker:
        env["CACHEWORK_BROKER_URL"] = broker
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    message = str(refused.value)
    assert message.startswith("CACHEWORK_QUEUE_TYPE='quorum' needs a RabbitMQ broker")
    assert "secret" not in message


def _build(**env: str) -> dict:
    import celeryconfig

    values = {"CACHEWORK_BROKER_URL": AMQP, **{f"CACHEWORK_{k.upper()}": v for k, v in env.items()}}
    return celeryconfig.build(load_settings(values))


def test_classic_queues_are_declared_as_before():
    conf = _build()
    queues = {q.name: q for q in conf["task_queues"]}
    assert list(queues) == ["versions", "cache", "invalidations", "celery"]
    for name, queue in queues.items():
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
            name,
            "direct",
            name,
        )
        assert not queue.queue_arguments
    assert "task_default_queue_type" not in conf  # Celery's default: classic


def test_quorum_queues_each_with_a_topic_exchange_and_quorum_settings():
    conf = _build(queue_type="quorum", shared_broker="1")
    queues = {q.name: q for q in conf["task_queues"]}
    assert list(queues) == ["versions", "cache", "invalidations"]  # `celery`: the app's
    for name, queue in queues.items():
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        # native delayed delivery (a retry's countdown) needs a topic exchange
        assert (queue.exchange.name, queue.exchange.type) == (f"{name}.topic", "topic")
        assert queue.routing_key == name
        assert not queue.exclusive and not queue.auto_delete and queue.durable
    assert conf["task_default_queue_type"] == "quorum"
    assert conf["task_create_missing_queue_type"] == "quorum"
    assert conf["worker_detect_quorum_queues"] is True
    assert conf["broker_native_delayed_delivery_queue_type"] == "quorum"
    # Quorum queues have no priorities (before RabbitMQ 3.12) and no global QoS.
    assert conf.get("task_queue_max_priority") is None
    assert conf.get("task_default_priority") is None


def test_celery_detects_the_quorum_queues():
    from celery.utils.quorum_queues import detect_quorum_queues

    from cachework.worker import create_app

    for queue_type, detected in (("classic", False), ("quorum", True)):
        env = {"CACHEWORK_BROKER_URL": AMQP, "CACHEWORK_QUEUE_TYPE": queue_type}
        app = create_app(load_settings(env))
        try:
            assert detect_quorum_queues(app, "amqp")[0] is detected
        finally:
            app.runtime.close()
            app.close()


# RabbitMQ 3.10's replies, as received by py-amqp.
QUORUM_NOT_CLASSIC = (
    "Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
    "'cache' in vhost 'prod': received none but current is the value 'quorum' of type "
    "'longstr'"
)
CLASSIC_NOT_QUORUM = (
    "Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
    "'versions' in vhost '/': received the value 'quorum' of type 'longstr' but current is none"
)
EXCHANGE_TYPE = (
    "Exchange.declare: (406) PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
    "'cachework.cache.topic' in vhost 'prod': received 'topic' but current is 'direct'"
)


def test_the_refusal_of_a_quorum_queue_to_a_classic_worker():
    assert describe_refusal(Exception(QUORUM_NOT_CLASSIC), "classic") == (
        "RabbitMQ queue 'cache' (vhost 'prod') is a quorum queue, but CACHEWORK_QUEUE_TYPE "
        "is classic: set CACHEWORK_QUEUE_TYPE=quorum, or stop every worker, let the queue "
        "drain and delete it (rabbitmqctl -p prod delete_queue cache) so it is declared "
        "again as classic"
    )


def test_the_refusal_of_a_classic_queue_to_a_quorum_worker():
    line = describe_refusal(Exception(CLASSIC_NOT_QUORUM), "quorum")
    assert line.startswith(
        "RabbitMQ queue 'versions' (vhost '/') is a classic queue, but CACHEWORK_QUEUE_TYPE "
        "is quorum: set CACHEWORK_QUEUE_TYPE=classic"
    )


def test_other_refusals_name_the_argument_and_both_values():
    line = describe_refusal(Exception(EXCHANGE_TYPE), "quorum")
    assert line.startswith(
        "RabbitMQ exchange 'cachework.cache.topic' (vhost 'prod') exists with type='direct', but "
        "cachework declares it with type='topic'"
    )
    assert describe_refusal(Exception("something else"), "classic") == (
        "RabbitMQ refused a declaration of cachework's: something else"
    )
