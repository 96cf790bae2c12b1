"""Parsing of the CACHEWORK_* settings not covered in test_settings.py: the schedules,
the projects table, the metrics port and address, each read from a plain mapping (the
environment is read once, in load_settings), with a ConfigError naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachework.errors import ConfigError
from cachework.settings import load_settings


@pytest.fixture
def load(tmp_path: Path):
    def load(**values: str):
        env = {f"CACHEWORK_{name.upper()}": value for name, value in values.items()}
        return load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), **env})

    return load


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "0 3 * * *"),  # nightly by default
        ("  */5 * * * 1-5 ", "*/5 * * * 1-5"),
        ("off", None),
        ("OFF", None),
    ],
)
def test_import_schedule(load, raw, expected):
    values = {} if raw is None else {"import_schedule": raw}
    assert load(**values).import_schedule == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 86_400.0), ("90", 90.0), ("1", 1.0), ("off", None)]
)
def test_sync_schedule(load, raw, expected):
    values = {} if raw is None else {"sync_schedule": raw}
    assert load(**values).sync_schedule == expected


@pytest.mark.parametrize(
    ("raw", "models", "expected"),
    [
        (None, None, ("projects", "uuid", "uuid")),  # the example app's own default
        (None, "tests.sodar_app.models", None),  # another app: none unless configured
        ("roles_project.sodar_uuid:uuid", None, ("roles_project", "sodar_uuid", "uuid")),
        ("app.project.id:INT", None, ("app.project", "id", "int")),
        ("project.id", None, ("project", "id", None)),  # the key type is inferred
        ("off", None, None),
        ("None", None, None),
    ],
)  # fmt: skip
def test_projects(load, raw, models, expected):
    values = {} if raw is None else {"projects": raw}
    if models:
        values["models"] = models
    assert load(**values).projects == expected


@pytest.mark.parametrize(
    "raw", ["projects", "a.b.c.d", "projects.uuid:float", "projects.1uuid", "pröjects.uuid"]
)
def test_a_bad_projects_table_is_named(load, raw):
    with pytest.raises(ConfigError, match=r"CACHEWORK_PROJECTS=.*\[schema\.\]table\.column"):
        load(projects=raw)


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, None), ("off", None), ("0", None), ("9100", 9100)]
)
def test_metrics_port(load, raw, expected):
    values = {} if raw is None else {"metrics_port": raw}
    assert load(**values).metrics_port == expected


@pytest.mark.parametrize("raw", ["65536", "http", "-1", "80.5"])
def test_a_bad_metrics_port_is_named(load, raw):
    with pytest.raises(ConfigError, match=f"CACHEWORK_METRICS_PORT='{raw}' is not a TCP port"):
        load(metrics_port=raw)


@pytest.mark.parametrize(
    ("raw", "expected"), [("", "127.0.0.1"), ("0.0.0.0", "0.0.0.0"), ("::", "::")]
)
def test_metrics_bind(load, raw, expected):
    assert load(metrics_bind=raw).metrics_bind == expected


def test_a_bad_metrics_bind_is_named(load):
    with pytest.raises(ConfigError) as caught:
        load(metrics_bind="0.0.0.0; rm")
    assert "CACHEWORK_METRICS_BIND='0.0.0.0; rm' is not an address" in str(caught.value)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"queue_type": "lazy"}, "CACHEWORK_QUEUE_TYPE='lazy' is not one of classic, quorum"),
        ({"queue_type": "quorum"}, "needs a RabbitMQ broker"),  # on the embedded broker
        ({"log_format": "xml"}, "CACHEWORK_LOG_FORMAT='xml' is not one of text, json"),
    ],
)
def test_choices_name_the_valid_values(load, values, fragment):
    with pytest.raises(ConfigError) as caught:
        load(**values)
    assert fragment in str(caught.value)


def test_quorum_queues_on_rabbitmq(load):
    settings = load(queue_type=" Quorum ", broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert settings.queue_type == "quorum"
