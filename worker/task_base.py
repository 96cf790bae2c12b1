"""The base class of every task of an app made by `worker.create_app` (`task_cls`).

It adds to Celery's `Task` what keeps bad or huge input and output in bounds:

- the arguments are checked against the task's signature before it runs. Celery checks
  them only in the sender's process (`apply_async`), and only when the sender has the
  task: a client that calls `send_task("cachework.import_versions", kwargs={"modles":
  ...})` otherwise makes Python raise a TypeError inside the task, logged with a
  traceback. Here it is a ValidationError naming the task and the bad argument(s): one
  WARNING line (`throws`), a failed result, no retry.
- an argument whose JSON is over `argument_limit` (ARGUMENT_LIMIT; an item of an
  `item_arguments` list: RESULT_MAX, it is another task's result) is refused the same
  way, naming it and its size, before the task does anything.
- what the result backend stores is bounded: with `result_extended` it saves the
  request's args and kwargs with every state (STARTED, PROGRESS, RETRY, SUCCESS,
  FAILURE), so a call whose arguments' JSON is over STORED_ARGUMENTS_MAX has them stored
  cut (each argument to its start and end); the task itself and `retry` (which re-sends
  them) get them whole. A result over RESULT_MAX keeps its shape: its lists of messages
  (`cut_lists`: `errors`, `warnings`) keep their first entries and end with "... N more
  errors left out"; a result that cannot be cut so (a huge record) is a TooLargeError.
  Together an entry stays under STORED_MAX bytes.
- a failure on the caller's input (a ValidationError, such as the refusals above, or a
  name that does not exist) is noted for the metrics, so the worker counts it with
  outcome REJECTED instead of FAILURE (`cachework.instruments.note_failure`).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from celery import Task

from cachework import instruments
from cachework.errors import TooLargeError, ValidationError, cut, shown
from cachework.worker.logsetup import EXPECTED_ERRORS

ARGUMENT_MAX = 200  # characters (as JSON) of one argument a cut stored request keeps whole
ARGUMENTS_MAX = 20  # positional or keyword arguments a cut stored request keeps
NAMES_SHOWN = 5  # bad argument names an error message lists
ARGUMENT_LIMIT = 64 * 1024  # characters of JSON of one argument a task accepts
RESULT_MAX = 256 * 1024  # characters of JSON of a result a task stores (ASCII: bytes)
STORED_ARGUMENTS_MAX = 8 * 1024  # characters of JSON of args and kwargs stored as sent
STORED_MAX = 300_000  # bytes of one stored entry: result, arguments, error and traceback


def _json(value: Any) -> str:
    """`value` as the JSON a backend stores (ASCII, so characters are bytes)."""
    try:
        return json.dumps(value, default=repr)
    except (TypeError, ValueError):  # circular or unencodable: repr says enough
        return repr(value)


def json_size(value: Any) -> int:
    """Characters (and bytes) of `value`'s JSON."""
    return len(_json(value))


def bounded_argument(value: Any) -> Any:
    """`value` if its JSON is short, else a string standing for it (start, end, and how
    much was cut), so a stored request stays JSON and small."""
    text = _json(value)
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


def stored_arguments(args: Any, kwargs: Any) -> tuple[list, dict]:
    """The args and kwargs a result backend stores: as sent when their JSON is at most
    STORED_ARGUMENTS_MAX characters, else each bounded."""
    args, kwargs = list(args or ()), dict(kwargs or {})
    if json_size([args, kwargs]) <= STORED_ARGUMENTS_MAX:
        return args, kwargs
    return bounded_args(args), bounded_kwargs(kwargs)


def _left_out(count: int, what: str) -> str:
    return f"... {count} more {what} left out"


def bounded_result(task_name: str, result: Any, cut_lists: tuple[str, ...] = ()) -> Any:
    """`result` if its JSON is at most RESULT_MAX characters; else the same shape with its
    lists of messages named in `cut_lists` (`errors`, `warnings`) cut to their first
    entries and a last "... N more errors left out"; a TooLargeError naming the task and
    the size when that is not enough (or the task has no such list: a record is never
    cut)."""
    size = json_size(result)
    if size <= RESULT_MAX:
        return result
    if isinstance(result, dict):
        lists = [
            key
            for key in cut_lists
            if isinstance(result.get(key), list) and all(isinstance(e, str) for e in result[key])
        ]
        out = {key: [] if key in lists else value for key, value in result.items()}
        notes = sum(len(_json(_left_out(10**12, str(key)))) + 2 for key in lists)
        budget = RESULT_MAX - json_size(out) - notes
        for key in lists:
            for entry in result[key]:
                entry = cut(entry)
                cost = len(_json(entry)) + 2  # and ", "
                if cost > budget:
                    break
                out[key].append(entry)
                budget -= cost
            left = len(result[key]) - len(out[key])
            if left:
                out[key].append(_left_out(left, str(key)))
        if lists and json_size(out) <= RESULT_MAX:
            return out
    raise TooLargeError(
        f"{task_name}: its result is {size} characters of JSON, over the {RESULT_MAX} a task "
        "stores (a result's lists of errors or warnings are cut; this one cannot be)"
    )


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


def size_problem(
    task_name: str, arguments: dict[str, Any], limit: int, item_arguments: tuple[str, ...] = ()
) -> TooLargeError | None:
    """None if every argument's JSON is at most `limit` characters (each item of a list
    named in `item_arguments`: RESULT_MAX), else the error naming the first one over."""
    for name, value in arguments.items():
        if name in item_arguments and isinstance(value, list):
            items, most = [(f"{name}[{i}]", v) for i, v in enumerate(value)], RESULT_MAX
        else:
            items, most = [(name, value)], limit
        for label, item in items:
            size = json_size(item)
            if size > most:
                return TooLargeError(
                    f"{task_name}: argument {label} is {size} characters of "
                    f"JSON, over the {most} a task accepts; nothing was done"
                )
    return None


class CacheworkTask(Task):
    """Checks a call's arguments (signature and size) before the task runs; bounds what
    the result backend stores of its request and of its result. `throws`: expected
    errors are one WARNING line (tasks that name their own `throws` keep them).

    Task options (`@shared_task(argument_limit=..., item_arguments=(...), cut_lists=(...))`)
    change the size check (None: a task whose arguments its own checks bound) and name the
    result's lists of messages that a too large result cuts."""

    throws = EXPECTED_ERRORS
    argument_limit: int | None = ARGUMENT_LIMIT
    item_arguments: tuple[str, ...] = ()  # lists of other tasks' results: each RESULT_MAX
    cut_lists: tuple[str, ...] = ()  # the result's lists of messages a too large one cuts
    _signature: inspect.Signature | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        instruments.forget_failure()
        self.bound_stored_request()
        if self.typing:  # Celery's switch for its own (sender-side) check
            problem = argument_problem(self.name, self._run_signature(), args, kwargs)
            if problem is None and self.argument_limit is not None:
                named = self._run_signature().bind(*args, **kwargs).arguments
                problem = size_problem(self.name, named, self.argument_limit, self.item_arguments)
            if problem is not None:
                raise problem
        return bounded_result(self.name, super().__call__(*args, **kwargs), self.cut_lists)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Note why the task failed: the worker's postrun signal, which counts it, gets
        only the state FAILURE, and bad input is counted as REJECTED."""
        instruments.note_failure(self.name, exc)
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def retry(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        """Celery's retry, re-sending the whole arguments (the request's are cut)."""
        whole = getattr(self.request, "whole_arguments", None)
        if whole is not None:
            args = whole[0] if args is None else args
            kwargs = whole[1] if kwargs is None else kwargs
        return super().retry(args, kwargs, *rest, **options)

    def bound_stored_request(self) -> None:
        """Keep the request's whole args and kwargs aside and put the stored form in their
        place (what the backend saves with each state and the signals pass on). Once per
        request, and only in a worker's run: a direct call has Celery's shared default."""
        request = self.request
        if request.called_directly or getattr(request, "whole_arguments", None) is not None:
            return
        request.whole_arguments = (request.args, request.kwargs)
        request.args, request.kwargs = stored_arguments(request.args, request.kwargs)

    def _run_signature(self) -> inspect.Signature:
        """The signature of `run` (a bound task's `self` left out; through the autoretry
        wrapper to the function it wraps), read once per task."""
        if self._signature is None:
            self._signature = inspect.signature(self.run)
        return self._signature
