"""Settings and Celery config: pure logic, no services."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import celeryconfig
from cachework.errors import ConfigError
from cachework.settings import load_settings, mask_url
from cachework.worker.logsetup import most_verbose


def test_embedded_defaults(tmp_path: Path):
    s = load_settings({"CACHEWORK_DATA_DIR": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'cachework.db'}"
    assert s.broker_url == "filesystem://"
    assert s.result_backend == "db+" + s.database_url
    assert s.redis_url is None
    assert s.models == ("demo.models",)


def test_postgres_url_gets_psycopg_driver_and_redis_broker_feeds_redis_url(tmp_path: Path):
    s = load_settings(
        {
            "CACHEWORK_DATA_DIR": str(tmp_path),
            "CACHEWORK_DATABASE_URL": "postgresql://u:secret@127.0.0.1/app",
            "CACHEWORK_BROKER_URL": "redis://127.0.0.1:6379/3",
        }
    )
    assert s.database_url == "postgresql+psycopg://u:secret@127.0.0.1/app"
    assert s.redis_url == "redis://127.0.0.1:6379/3"
    assert s.result_backend == "db+postgresql+psycopg://u:secret@127.0.0.1/app"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("CACHEWORK_DATABASE_URL", "mongodb://x:pw@h/db", "unknown scheme 'mongodb'"),
        ("CACHEWORK_BROKER_URL", "kafka://h", "unknown scheme 'kafka'"),
        ("CACHEWORK_REDIS_URL", "http://h", "not a redis://"),
        ("CACHEWORK_TASK_SOFT_TIME_LIMIT", "ten", "not an integer"),
        ("CACHEWORK_IMPORT_SCHEDULE", "3 * *", "five-field crontab"),
        ("CACHEWORK_SYNC_SCHEDULE", "-5", "at least"),
        ("CACHEWORK_MODELS", "demo.models,not a module", "not a module path"),
        ("CACHEWORK_LOG_LEVEL", "LOUD", "LOUD"),
        ("CACHEWORK_RESULT_BACKEND", "foo://x:pw@h/0", "unknown result backend 'foo'"),
        ("CACHEWORK_RESULT_BACKEND", "nosuch", "unknown result backend 'nosuch'"),
    ],
)
def test_bad_values_name_the_variable_and_value(name, value, fragment, tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), name: value})
    message = str(info.value)
    assert name in message or name == "CACHEWORK_LOG_LEVEL"
    assert fragment in message
    assert "pw@" not in message  # passwords are masked


@pytest.mark.parametrize(
    "value", ["redis://127.0.0.1:6379/2", "db+postgresql://u@h/app", "rpc://", "disabled"]
)
def test_known_result_backends_are_accepted(value, tmp_path: Path):
    s = load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_RESULT_BACKEND": value})
    assert s.result_backend == value


def test_worker_logs_at_the_more_verbose_of_cli_and_environment_level():
    # Celery passes `-l` as a number and always passes one (WARNING unless chosen).
    assert most_verbose(logging.WARNING, "INFO") == logging.INFO
    assert most_verbose(logging.DEBUG, "INFO") == logging.DEBUG
    assert most_verbose(None, "error") == logging.ERROR
    assert most_verbose() == logging.INFO


def test_hard_limit_must_exceed_soft_limit(tmp_path: Path):
    with pytest.raises(ConfigError, match="CACHEWORK_TASK_TIME_LIMIT=30"):
        load_settings(
            {
                "CACHEWORK_DATA_DIR": str(tmp_path),
                "CACHEWORK_TASK_SOFT_TIME_LIMIT": "60",
                "CACHEWORK_TASK_TIME_LIMIT": "30",
            }
        )


def test_the_broker_visibility_timeout_is_configurable(tmp_path: Path):
    """Issue 12, defect 3: it was 3600 s and could not be changed."""
    env = {"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_BROKER_VISIBILITY_TIMEOUT": "45"}
    conf = celeryconfig.build(load_settings(env))
    assert conf["broker_transport_options"]["visibility_timeout"] == 45
    for bad in ("soon", "5"):
        env["CACHEWORK_BROKER_VISIBILITY_TIMEOUT"] = bad
        with pytest.raises(ConfigError, match=f"CACHEWORK_BROKER_VISIBILITY_TIMEOUT='{bad}'"):
            load_settings(env)


def test_the_broker_restore_interval_is_configurable(tmp_path: Path):
    """Issue 12, item 3: kombu's Redis transport looks for unacknowledged messages past
    the visibility timeout only every 10 s x every 10th sweep (about 100 s) by default;
    the sweep interval is a setting and every sweep scans."""
    env = {"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_BROKER_URL": "redis://h/1"}
    options = celeryconfig.build(load_settings(env))["broker_transport_options"]
    assert options["unacked_restore_interval"] == 10
    assert options["unacked_restore_throttle"] == 1
    env["CACHEWORK_BROKER_RESTORE_INTERVAL"] = "2"
    options = celeryconfig.build(load_settings(env))["broker_transport_options"]
    assert options["unacked_restore_interval"] == 2
    for bad, why in (("often", "not an integer"), ("0", "at least 1"), ("-3", "at least 1")):
        env["CACHEWORK_BROKER_RESTORE_INTERVAL"] = bad
        with pytest.raises(ConfigError, match=f"CACHEWORK_BROKER_RESTORE_INTERVAL='{bad}'.*{why}"):
            load_settings(env)


def test_mask_url_hides_only_the_password():
    assert mask_url("redis://:hunter2@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("amqp://guest:pw@127.0.0.1//") == "amqp://guest:***@127.0.0.1//"
    assert mask_url("filesystem://") == "filesystem://"


def test_celery_config_is_json_only_late_ack_and_routed(tmp_path: Path):
    conf = celeryconfig.build(load_settings({"CACHEWORK_DATA_DIR": str(tmp_path)}))
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_soft_time_limit"] < conf["task_time_limit"]
    # A dead worker's message is redelivered within minutes, after any retry countdown.
    assert 300 < conf["broker_transport_options"]["visibility_timeout"] <= 600
    assert conf["worker_send_task_events"] and not conf["worker_hijack_root_logger"]
    # A broker dedicated to cachework (the default): Celery's default queue as well.
    assert {q.name for q in conf["task_queues"]} == {"versions", "cache", "invalidations", "celery"}
    assert conf["task_routes"] == ("cachework.worker.routing.route_task",)
    assert not (tmp_path / "broker").exists()  # the transport makes it when it connects
    assert conf["task_send_sent_event"]
    assert conf["beat_schedule_filename"].startswith(str(tmp_path))


def test_build_creates_nothing(tmp_path: Path):
    """Beat makes its schedule's folder when it starts (tests/test_worker.py), the
    embedded broker its folders when it connects (tests/test_any_client.py)."""
    data_dir = tmp_path / "not" / "yet"
    for broker in ("redis://h/1", "filesystem://"):
        celeryconfig.build(
            load_settings({"CACHEWORK_DATA_DIR": str(data_dir), "CACHEWORK_BROKER_URL": broker})
        )
    assert not data_dir.exists()


def test_beat_schedule_is_configurable_and_can_be_turned_off(tmp_path: Path):
    on = celeryconfig.build(
        load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_SYNC_SCHEDULE": "120"})
    )["beat_schedule"]
    assert on["nightly-version-import"]["task"] == "cachework.import_versions"
    assert on["project-cache-sync"]["schedule"] == 120.0
    off = celeryconfig.build(
        load_settings(
            {
                "CACHEWORK_DATA_DIR": str(tmp_path),
                "CACHEWORK_IMPORT_SCHEDULE": "off",
                "CACHEWORK_SYNC_SCHEDULE": "off",
            }
        )
    )["beat_schedule"]
    assert off == {}


def test_result_backend_names_are_celerys_own():
    """The settings keep Celery's backend aliases so that reading them imports no Celery;
    this fails when a Celery release adds or removes one."""
    from celery.app.backends import BACKEND_ALIASES

    from cachework.settings import RESULT_BACKENDS

    assert set(BACKEND_ALIASES) == RESULT_BACKENDS


def test_the_example_apps_tables_and_projects_are_defaults_for_the_example_app_only(tmp_path):
    """Another app's models must not pull in the demo's cached tables (which import the
    demo's models into its Continuum set-up) nor assume a `projects` table."""
    example = load_settings({"CACHEWORK_DATA_DIR": str(tmp_path)})
    assert example.cached_tables == ("demo.cached_tables",)
    assert example.projects == ("projects", "uuid", "uuid")
    other = load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_MODELS": "myapp.models"})
    assert other.cached_tables == () and other.projects is None
    both = load_settings(
        {
            "CACHEWORK_DATA_DIR": str(tmp_path),
            "CACHEWORK_MODELS": "demo.models,tests.versions_models",
        }
    )
    assert both.cached_tables == ("demo.cached_tables",)
