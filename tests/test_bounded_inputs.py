"""Regression tests of issue 12, defect 6: every text input is bounded and NUL-free, and a
huge bad value is never repeated whole in an error (logs, result backends)."""

from __future__ import annotations

import pytest

from cachework.cache import jobs
from cachework.cache.invalidation import validate_event
from cachework.errors import MESSAGE_MAX, CacheworkError, ValidationError, cut, shown
from cachework.importers.versions import import_versions
from demo.seed import project_uuid, seed
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
    assert MESSAGE_MAX - 10 < len(str(err)) <= MESSAGE_MAX
    assert str(err).startswith("name='xxx") and str(err).endswith("must be short")
    assert "characters cut" in str(err)
    assert len(shown(HUGE)) < 120 and "10000000 characters" in shown(HUGE)
    assert cut("short") == "short"
    assert isinstance(err, CacheworkError)


def test_a_cut_message_is_at_most_message_max_with_its_note():
    """The note of what was cut was added after the cut: messages reached 630 characters."""
    for length in [*range(MESSAGE_MAX - 5, MESSAGE_MAX + 120), 10**4, 10**6, 10**7]:
        text = "m" * (length - 5) + "TAIL!"
        message = str(ValidationError(text))
        assert len(message) <= MESSAGE_MAX, length
        if length <= MESSAGE_MAX:
            assert message == text
        else:
            left_out = int(message.split("...(")[1].split(" characters cut")[0])
            note = f"...({left_out} characters cut)..."
            assert message.endswith("TAIL!") and len(message) - len(note) + left_out == length
    for limit in (80, 200):
        assert len(cut("z" * 10**6, limit)) <= limit


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
    assert len(str(caught.value)) <= MESSAGE_MAX


# --- the task base class: argument checks and the stored request of a failed task -------


@pytest.fixture
def base_app():
    """An app of its own whose tasks get cachework's base class (no broker: `apply`)."""
    from celery import Celery, signals

    from cachework.errors import TransientError
    from cachework.worker.task_base import CacheworkTask

    app = Celery("bounded-inputs", task_cls=CacheworkTask, set_as_current=False)

    @app.task(name="bounded.fails", bind=True, shared=False)  # on this app only
    def fails(self, text: str, kind: str = "permanent") -> None:
        raise (ValidationError if kind == "permanent" else TransientError)(f"bad {shown(text)}")

    failures: list[tuple] = []

    def on_failure(sender=None, args=None, kwargs=None, **_kwargs) -> None:
        if getattr(sender, "name", None) == "bounded.fails":
            failures.append((args, kwargs))

    signals.task_failure.connect(on_failure, weak=False)
    try:
        yield app, fails, failures
    finally:
        signals.task_failure.disconnect(on_failure)
        app.close()


def test_a_failure_keeps_a_bounded_request(base_app):
    """What a worker's result backend stores with a failure (`result_extended`) is the
    request's args and kwargs, as the failure signal gets them: a 10 MB bad argument was
    stored whole next to its cut message. Every state now stores them bounded, a transient
    error's too (a retry re-sends the whole ones: tests/test_bounded_results.py); a 10 MB
    argument is refused before the task runs (TooLargeError, naming it)."""
    _app, fails, failures = base_app
    refused = fails.apply(kwargs={"text": HUGE, "kind": "permanent"})
    assert refused.state == "FAILURE" and "argument text is 10000002 characters" in str(
        refused.result
    )
    assert fails.apply(kwargs={"text": "short", "kind": "permanent"}).state == "FAILURE"
    long = "y" * 60_000  # accepted, longer than a stored request keeps
    assert fails.apply(kwargs={"text": long, "kind": "transient"}).state == "FAILURE"
    (_, cut_kwargs), (_, short_kwargs), (_, transient_kwargs) = failures
    assert len(str(cut_kwargs)) < 400 and "characters cut" in cut_kwargs["text"]
    assert short_kwargs == {"text": "short", "kind": "permanent"}
    assert len(str(transient_kwargs)) < 400 and "characters cut" in transient_kwargs["text"]


def test_an_unknown_or_missing_argument_is_a_validation_error_naming_it(base_app):
    """A client that sends a task by name gets no check of its arguments from Celery: a
    typo was a TypeError inside the task (logged with a traceback)."""
    _app, fails, _failures = base_app
    for kwargs, words in [
        (
            {"txt": "x"},
            ["bounded.fails", "unknown argument(s) 'txt'", "missing argument(s) 'text'"],
        ),
        ({"text": "x", HUGE: 1}, ["unknown argument(s) 'xxx", "(10000000 characters)"]),
        ({"text": "x", "kind": "p", "more": 1, "yet": 2}, ["'more', 'yet'"]),
    ]:
        result = fails.apply(kwargs=kwargs)
        assert isinstance(result.result, ValidationError), result.result
        message = str(result.result)
        assert all(w in message for w in words), message
        assert "its arguments: text, kind" in message and len(message) < 400
    too_many = fails.apply(args=["a", "b", "c"])
    assert "3 positional arguments given, at most 2" in str(too_many.result)
    twice = fails.apply(args=["a"], kwargs={"text": "b"})
    assert "'text' given twice" in str(twice.result)


def test_bounded_arguments_stay_json_and_small():
    from cachework.worker.task_base import bounded_args, bounded_kwargs

    many = {f"k{i}": i for i in range(50)}
    kept = bounded_kwargs({**many, "big": [HUGE], HUGE: 1})
    assert len(kept) == 21 and kept["..."] == "32 more keyword arguments cut"
    assert bounded_kwargs({"a": 1, "b": [1, 2]}) == {"a": 1, "b": [1, 2]}
    assert bounded_kwargs({"big": [HUGE]})["big"].startswith('["xxx')
    assert len(bounded_kwargs({HUGE: 1})) == 1 and len(next(iter(bounded_kwargs({HUGE: 1})))) < 120
    assert bounded_args(["a", HUGE]) == ["a", cut(HUGE, 200)]
    assert bounded_args(range(30))[-1] == "...(10 more arguments cut)"


def test_every_task_of_our_app_has_the_base_class(tmp_path):
    """`create_app` sets the base class for the app, so shared_task gives it to ours."""
    from cachework import tasks  # noqa: F401 - registers the shared tasks
    from cachework.settings import load_settings
    from cachework.worker import create_app
    from cachework.worker.logsetup import EXPECTED_ERRORS
    from cachework.worker.task_base import CacheworkTask
    from tests.conftest import make_env

    app = create_app(load_settings(make_env(tmp_path)))
    try:
        ours = {name: t for name, t in app.tasks.items() if name.startswith("cachework.")}
        assert len(ours) >= 10
        for name, task in ours.items():
            assert isinstance(task, CacheworkTask), name
            assert set(EXPECTED_ERRORS) <= set(task.throws), name
    finally:
        app.runtime.close()
        app.close()
