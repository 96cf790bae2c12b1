"""The base class of every task of an app made by `worker.create_app` (`task_cls`).

It adds two things to Celery's `Task`, both about bad input:

- the arguments are checked against the task's signature before it runs. Celery checks
  them only in the sender's process (`apply_async`), and only when the sender has the
  task: a client that calls `send_task("cachework.import_versions", kwargs={"modles":
  ...})` otherwise makes Python raise a TypeError inside the task, logged with a
  traceback. Here it is a ValidationError naming the task and the bad argument(s): one
  WARNING line (`throws`), a failed result, no retry.
- a task that fails with a PermanentError (never retried) has its request's args and
  kwargs cut before Celery stores the failure. With `result_extended` the backend saves
  them next to the error, so a 1 MB bad argument, already cut in the message, would be
  stored whole once more. Retried errors keep them whole: `Task.retry` re-sends the
  request's args and kwargs.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from celery import Task

from cache.errors import PermanentError, ValidationError, cut, shown
from worker.logsetup import EXPECTED_ERRORS

ARGUMENT_MAX = 200  # characters (as JSON) of one argument a failed request keeps whole
ARGUMENTS_MAX = 20  # positional or keyword arguments a failed request keeps
NAMES_SHOWN = 5  # bad argument names an error message lists


def bounded_argument(value: Any) -> Any:
    """`value` if its JSON is short, else a string standing for it (start, end, and how
    much was cut), so a stored request stays JSON and small."""
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):  # circular or unencodable: repr says enough
        text = repr(value)
    if len(text) <= ARGUMENT_MAX:
        return value
    return cut(value if isinstance(value, str) else text, ARGUMENT_MAX)


def bounded_args(args: Any) -> list:
    """The first ARGUMENTS_MAX positional arguments, each bounded, and a note of the rest."""
    items = list(args or ())
    kept = [bounded_argument(a) for a in items[:ARGUMENTS_MAX]]
    if len(items) > ARGUMENTS_MAX:
        kept.append(f"...({len(items) - ARGUMENTS_MAX} more arguments cut)")
    return kept


def bounded_kwargs(kwargs: Any) -> dict:
    """The first ARGUMENTS_MAX keyword arguments (names and values bounded), and a note of
    the rest under the key "...". A name can be as long as a value."""
    items = list((kwargs or {}).items())
    kept = {cut(str(k), 80): bounded_argument(v) for k, v in items[:ARGUMENTS_MAX]}
    if len(items) > ARGUMENTS_MAX:
        kept["..."] = f"{len(items) - ARGUMENTS_MAX} more keyword arguments cut"
    return kept


def _names(names: list[str]) -> str:
    listed = ", ".join(shown(n, 40) for n in names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return listed + (f" and {more} more" if more > 0 else "")


def argument_problem(task_name: str, signature: inspect.Signature, args: tuple, kwargs: dict):
    """None if `args` and `kwargs` fit `signature`, else the ValidationError to raise,
    naming the task, the bad argument(s) and the arguments it takes."""
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        why = str(exc)
    else:
        return None
    params = list(signature.parameters.values())
    kinds = inspect.Parameter
    positional = [
        p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    named = {p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    problems = []
    if not any(p.kind is kinds.VAR_POSITIONAL for p in params) and len(args) > len(positional):
        problems.append(f"{len(args)} positional arguments given, at most {len(positional)}")
    if not any(p.kind is kinds.VAR_KEYWORD for p in params):
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            problems.append(f"unknown argument(s) {_names(unknown)}")
    given = set(kwargs) | {p.name for p in positional[: len(args)]}
    twice = [p.name for p in positional[: len(args)] if p.name in kwargs]
    if twice:
        problems.append(f"argument(s) {_names(twice)} given twice")
    missing = [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
        and p.name not in given
    ]
    if missing:
        problems.append(f"missing argument(s) {_names(missing)}")
    takes = ", ".join(p.name for p in params if p.kind not in (kinds.VAR_KEYWORD,)) or "none"
    return ValidationError(f"{task_name}: {'; '.join(problems) or why} (its arguments: {takes})")


class CacheworkTask(Task):
    """Checks a call's arguments before the task runs; bounds a permanently failed
    request's stored arguments. `throws`: expected errors are one WARNING line (tasks
    that name their own `throws` keep them)."""

    throws = EXPECTED_ERRORS
    _signature: inspect.Signature | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if self.typing:  # Celery's switch for its own (sender-side) check
                problem = argument_problem(self.name, self._run_signature(), args, kwargs)
                if problem is not None:
                    raise problem
            return super().__call__(*args, **kwargs)
        except PermanentError:
            self._bound_failed_request()
            raise

    def _run_signature(self) -> inspect.Signature:
        """The signature of `run` (a bound task's `self` left out; through the autoretry
        wrapper to the function it wraps), read once per task."""
        if self._signature is None:
            self._signature = inspect.signature(self.run)
        return self._signature

    def _bound_failed_request(self) -> None:
        """Cut the args and kwargs the worker's request carries (what the result backend
        stores with the failure and the failure signal passes on). Only in a worker's
        run: a direct call has Celery's shared default request."""
        request = self.request
        if request.called_directly:
            return
        request.args = bounded_args(request.args)
        request.kwargs = bounded_kwargs(request.kwargs)
