"""Regression tests of issue 12, defect 6: every text input is bounded and NUL-free, and a
huge bad value is never repeated whole in an error (logs, result backends)."""

from __future__ import annotations

import pytest

from cache import jobs
from cache.errors import MESSAGE_MAX, CacheworkError, ValidationError, cut, shown
from cache.invalidation import validate_event
from demo.seed import project_uuid, seed
from importers.versions import import_versions
from tests.import_helpers import MODELS, STEPS, apply_sql, create_all, seed_fixed, transactions

HUGE = "x" * 10_000_000
ALL = MODELS.versioned


@pytest.fixture
def vdb(database):
    create_all(database)
    with database.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
    return database


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "ali\x00ce"}, "user='ali\\x00ce' contains a NUL character"),
        ({"comment": "a\x00b"}, "comment='a\\x00b' contains a NUL character"),
        ({"remote_addr": "10.0.0.1\x00"}, "remote_addr='10.0.0.1\\x00' contains a NUL"),
        ({"user": HUGE}, "is longer than 255 characters"),
        ({"comment": HUGE}, "is longer than 4096 characters"),
    ],
)
def test_import_text_inputs_are_bounded_and_nul_free(vdb, kwargs, message):
    """NUL ended as a raw DataError; 10 MB user and comment were stored as they were."""
    with vdb.session() as session, pytest.raises(ValidationError) as caught:
        import_versions(session, ALL, **kwargs)
    assert message in str(caught.value)
    assert len(str(caught.value)) < 200
    with vdb.session() as session:
        assert transactions(session) == 0


def test_an_error_message_never_repeats_a_huge_value():
    err = ValidationError(f"name={HUGE!r} must be short")
    assert len(str(err)) <= MESSAGE_MAX + 40
    assert str(err).startswith("name='xxx") and str(err).endswith("must be short")
    assert "characters cut" in str(err)
    assert len(shown(HUGE)) < 120 and "10000000 characters" in shown(HUGE)
    assert cut("short") == "short"
    assert isinstance(err, CacheworkError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"table": HUGE},
        {"table": "categories", "keys": [HUGE]},
        {"table": "categories", "keys": ["a\x00"]},
        {"table": "categories", "project": "p\x00"},
        {"table": "categories", "names": [HUGE]},
        {"table": "categories", "keys": HUGE},
    ],
)
def test_invalidation_inputs_are_bounded_in_their_errors(kwargs):
    with pytest.raises(ValidationError) as caught:
        validate_event(**kwargs)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    "args",
    [
        (HUGE, None, None, None),
        (None, HUGE, None, None),
        (None, "inventory", HUGE, None),
        (None, "inventory", None, HUGE),
        (None, "inventory", None, "a\x00b"),
    ],
)
def test_sync_inputs_are_bounded_in_their_errors(runtime, args):
    with runtime.database.session() as session:
        seed(session, projects=1, products=3)
    project, app_name, name, user = args
    with pytest.raises(CacheworkError) as caught:
        jobs.sync_scope(runtime, project or project_uuid(0), app_name, name, user)
    assert len(str(caught.value)) <= MESSAGE_MAX + 40
