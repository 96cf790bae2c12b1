"""tasks/policy.py: which errors a task retries, how often and how far apart, and that
each registered task carries the policy it was declared with (an app on the embedded
default, never started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.utils.time import get_exponential_backoff_interval

from cachework import errors
from cachework.settings import load_settings
from cachework.tasks import policy
from cachework.worker import create_app, routing
from cachework.worker.logsetup import EXPECTED_ERRORS
from tests.conftest import make_env

# Which policy each retrying task is declared with; the other tasks never retry.
DECLARED = {
    routing.IMPORT_VERSIONS: policy.IMPORT,
    routing.LOOKUP: policy.LOOKUP,
    routing.SYNC_CACHE: policy.CACHE_JOB,
    routing.SYNC_PROJECT_CACHE: policy.CACHE_JOB,
    routing.REBUILD_CHANGED: policy.CACHE_JOB,
    routing.DELETE_CACHE: policy.CACHE_JOB,
    routing.PROCESS_INVALIDATION: policy.CACHE_JOB,
}
OPTIONS = ("autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter", "max_retries")


def waits(options: dict) -> list[int]:
    """The seconds Celery waits before each retry of `options` (before any jitter)."""
    return [
        get_exponential_backoff_interval(
            options["retry_backoff"], retries, options["retry_backoff_max"]
        )
        for retries in range(options["max_retries"])
    ]


def test_retrying_builds_celerys_options():
    assert policy.retrying(2, 30, 4, jitter=False) == {
        "autoretry_for": (errors.TransientError,),
        "retry_backoff": 2,
        "retry_backoff_max": 30,
        "retry_jitter": False,
        "max_retries": 4,
        "throws": EXPECTED_ERRORS,
    }


@pytest.mark.parametrize(
    ("options", "expected", "jitter"),
    [
        (policy.LOOKUP, [1, 2, 4, 8, 8, 8], False),  # a fast PostgreSQL restart: ridden out
        (policy.CACHE_JOB, [1, 2, 4, 8, 16], True),
        (policy.IMPORT, [5, 10, 20, 40, 80], True),
    ],
)
def test_the_retry_schedules(options, expected, jitter):
    assert waits(options) == expected
    assert options["retry_jitter"] is jitter
    assert max(waits(options)) <= options["retry_backoff_max"]


@pytest.mark.parametrize("error", EXPECTED_ERRORS)
def test_bad_input_is_never_retried(error):
    """An expected error (bad input, a missing thing) fails at once: no policy retries it."""
    for options in (policy.LOOKUP, policy.CACHE_JOB, policy.IMPORT):
        assert not issubclass(error, options["autoretry_for"]), error
        assert error in options["throws"]


@pytest.mark.parametrize("error", [errors.LockedError, errors.LockLostError])
def test_a_held_or_lost_lock_is_retried(error):
    for options in (policy.LOOKUP, policy.CACHE_JOB, policy.IMPORT):
        assert issubclass(error, options["autoretry_for"])


def test_each_registered_task_has_its_declared_policy(tmp_path: Path):
    app = create_app(load_settings(make_env(tmp_path)))
    try:
        app.loader.import_default_modules()
        ours = {name: app.tasks[name] for name in app.tasks if name.startswith(routing.PREFIX)}
        assert set(DECLARED) <= set(ours)
        for name, task in ours.items():
            options = DECLARED.get(name)
            if options is None:
                assert not getattr(task, "autoretry_for", ()), name  # pings, status ...
                continue
            assert {o: getattr(task, o) for o in OPTIONS} == {o: options[o] for o in OPTIONS}
            assert set(EXPECTED_ERRORS) <= set(task.throws), name
    finally:
        app.runtime.close()
        app.close()
