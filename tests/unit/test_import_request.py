"""ImportRequest.parse: the version import's arguments checked once, at the edge (pure)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from cachework.errors import ValidationError
from cachework.importers.request import FIELDS, ImportRequest
from cachework.settings import load_settings
from cachework.worker import create_app, routing
from tests.conftest import make_env


def test_defaults_are_the_tasks():
    request = ImportRequest.parse()
    assert request == ImportRequest()
    assert request.as_kwargs() == {
        "models": None,
        "user": None,
        "remote_addr": None,
        "comment": None,
        "dry_run": False,
        "create": True,
        "update": True,
        "delete": True,
        "max_changes": None,
        "repair": False,
    }
    assert request.writes_everything


def test_a_good_request_keeps_its_values_and_models_become_a_tuple():
    request = ImportRequest.parse(
        models=["Product", "Category"],
        user="alice",
        remote_addr="10.0.0.1",
        comment="nightly",
        dry_run=True,
        create=False,
        max_changes=0,
        repair=True,
    )
    assert request.models == ("Product", "Category")
    assert (request.user, request.remote_addr, request.comment) == ("alice", "10.0.0.1", "nightly")
    assert request.as_kwargs()["models"] == ["Product", "Category"]
    assert ImportRequest.parse(**request.as_kwargs()) == request
    assert ImportRequest.parse(models=("Product",)).models == ("Product",)


@pytest.mark.parametrize(
    ("changes", "everything"),
    [({}, True), ({"dry_run": True}, False), ({"create": False}, False),
     ({"update": False}, False), ({"delete": False}, False), ({"max_changes": 5}, False),
     ({"repair": True}, True), ({"user": "u"}, True)],
)  # fmt: skip
def test_writes_everything_only_when_nothing_needs_counting_first(changes, everything):
    assert ImportRequest.parse(**changes).writes_everything is everything


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": "Product"}, "models='Product' must be a list of model names"),
        ({"models": {"Product": 1}}, "models={'Product': 1} must be a list"),
        ({"models": []}, "models=[] names no model; pass None"),
        ({"models": ["Product", 1]}, "models: 1 is not a model name"),
        ({"create": None}, "create=None must be true or false"),
        ({"update": "no"}, "update='no' must be true or false"),
        ({"delete": 0}, "delete=0 must be true or false"),
        ({"dry_run": "yes"}, "dry_run='yes' must be true or false"),
        ({"repair": 1}, "repair=1 must be true or false"),
        ({"max_changes": -1}, "max_changes=-1 must be 0 or more"),
        ({"max_changes": "10"}, "max_changes='10' must be a whole number"),
        ({"max_changes": True}, "max_changes=True must be a whole number"),
        ({"max_changes": 2.5}, "max_changes=2.5 must be a whole number"),
        ({"user": 7}, "user=7 must be a string"),
        ({"user": "ali\x00ce"}, "user='ali\\x00ce' contains a NUL character"),
        ({"user": "u" * 256}, "is longer than 255 characters"),
        ({"remote_addr": "x" * 51}, "longer than 50 characters"),
        ({"comment": "a\x00b"}, "comment='a\\x00b' contains a NUL character"),
        ({"comment": "c" * 4097}, "is longer than 4096 characters"),
        ({"modles": ["Product"]}, "unknown version import argument(s) 'modles'; valid: models"),
        ({"progress": print}, "unknown version import argument(s) 'progress'"),
    ],
)
def test_bad_input_is_a_validation_error_naming_the_value(kwargs, message):
    with pytest.raises(ValidationError) as caught:
        ImportRequest.parse(**kwargs)
    assert message in str(caught.value)


def test_limits_are_inclusive():
    request = ImportRequest.parse(user="u" * 255, remote_addr="r" * 50, comment="c" * 4096)
    assert len(request.comment) == 4096
    assert ImportRequest.parse(max_changes=0).max_changes == 0


def test_a_huge_bad_value_is_never_repeated_whole():
    huge = "x" * 1_000_000
    for kwargs in ({"user": huge}, {"comment": huge + "\x00"}, {huge: 1}, {"models": [huge, 1]}):
        with pytest.raises(ValidationError) as caught:
            ImportRequest.parse(**kwargs)
        assert len(str(caught.value)) < 700


def test_the_request_is_frozen_and_keyword_only():
    request = ImportRequest.parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.dry_run = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        ImportRequest(["Product"])  # type: ignore[misc]
    with pytest.raises(ValidationError, match="dry_run='yes'"):
        dataclasses.replace(request, dry_run="yes")


def test_the_fields_are_the_tasks_arguments():
    assert FIELDS == (
        "models", "user", "remote_addr", "comment", "dry_run", "create", "update", "delete",
        "max_changes", "repair",
    )  # fmt: skip


def test_the_task_takes_the_request_fields_with_the_same_defaults(tmp_path):
    """The task's keyword arguments are the public contract; the request mirrors them."""
    app = create_app(load_settings(make_env(tmp_path)))
    try:
        app.loader.import_default_modules()
        task = app.tasks[routing.IMPORT_VERSIONS]
        parameters = inspect.signature(task.run).parameters
        assert tuple(parameters) == FIELDS
        defaults = {f.name: f.default for f in dataclasses.fields(ImportRequest)}
        assert {name: p.default for name, p in parameters.items()} == defaults
    finally:
        app.runtime.close()
        app.close()
