"""cachework.worker.routing: the task names of the public contract, where each is routed, and the
queues a worker consumes (pure data and two functions; one Celery app on the embedded
default, never started, checks that Celery routes through them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.utils.imports import symbol_by_name

from cachework.settings import load_settings
from cachework.worker import create_app, routing
from tests.conftest import make_env

# The public contract (DESIGN.md, README): clients send these names as literals.
CONTRACT = {
    "IMPORT_VERSIONS": "cachework.import_versions",
    "SYNC_CACHE": "cachework.sync_cache",
    "DELETE_CACHE": "cachework.delete_cache",
    "PROCESS_INVALIDATION": "cachework.process_invalidation",
    "CACHE_STATUS": "cachework.cache_status",
    "LOOKUP": "cachework.lookup",
}


@pytest.fixture
def app(tmp_path: Path):
    """A cachework Celery app on the embedded default with its tasks imported."""
    app = create_app(load_settings(make_env(tmp_path)))
    app.loader.import_default_modules()
    yield app
    app.runtime.close()
    app.close()


@pytest.mark.parametrize(("constant", "name"), sorted(CONTRACT.items()))
def test_the_contracts_task_names_are_the_constants(constant, name):
    assert getattr(routing, constant) == name


@pytest.mark.parametrize(
    ("name", "queue"),
    [
        ("cachework.import_versions", "versions"),
        ("cachework.sync_cache", "cache"),
        ("cachework.sync_project_cache", "cache"),
        ("cachework.sync_cache_summary", "cache"),
        ("cachework.delete_cache", "cache"),
        ("cachework.lookup", "cache"),
        ("cachework.cache_status", "cache"),
        ("cachework.ping", "cache"),
        ("cachework.process_invalidation", "invalidations"),
        ("cachework.invalidation_probe", "invalidations"),
        ("cachework.some_chord_callback", routing.FALLBACK_QUEUE),  # not listed: fallback
    ],
)
def test_each_cachework_task_goes_to_its_queue(name, queue):
    assert routing.route_task(name, (), {}, {}) == {"queue": queue}
    assert routing.route_task(name) == {"queue": queue}  # Celery may pass only the name


@pytest.mark.parametrize("name", ["app.send_mail", "cachework", "cacheworkx.lookup", "", None, 7])
def test_any_other_task_is_left_to_the_apps_own_routing(name):
    assert routing.route_task(name, (), {}, {}) is None


def test_every_route_is_one_of_cachework_queues():
    assert set(routing.ROUTES.values()) | {routing.FALLBACK_QUEUE} <= set(routing.QUEUES)
    assert routing.DEFAULT_QUEUE not in routing.QUEUES


def test_a_shared_broker_leaves_celerys_default_queue_to_the_apps_workers():
    assert routing.queues(shared=True) == routing.QUEUES
    assert routing.queues(shared=False) == (*routing.QUEUES, routing.DEFAULT_QUEUE)


def test_the_routing_line_names_route_task():
    namespace: dict = {"celery": type("C", (), {"conf": type("Conf", (), {})()})()}
    exec(routing.ROUTING_LINE, namespace)
    (path,) = namespace["celery"].conf.task_routes
    assert symbol_by_name(path) is routing.route_task


def test_every_registered_task_has_a_route_of_its_own(app):
    ours = {name for name in app.tasks if name.startswith(routing.PREFIX)}
    assert ours == set(routing.ROUTES)  # none relies on the fallback, none is left over


def test_celery_routes_through_route_task(app):
    for name, queue in routing.ROUTES.items():
        assert app.amqp.router.route({}, name, (), {})["queue"].name == queue
    other = app.amqp.router.route({}, "app.other", (), {})["queue"].name
    assert other == app.conf.task_default_queue  # route_task said None: the app's default
