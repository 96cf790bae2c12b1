"""One version import request: the task's ten arguments as one typed, checked value.

The task, the command line and the Python API each build an `ImportRequest` once, at
their edge (`ImportRequest.parse(**arguments)`); everything after it trusts the request.
Bad input is a `ValidationError` naming the bad value, raised before anything runs.
Whether the named models exist is known only against the app's classes: the plan checks
that (`NotFoundError`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cachework.errors import ValidationError, shown

REMOTE_ADDR_MAX = 50
USER_MAX = 255  # user key or name, as recorded on the transaction
COMMENT_MAX = 4096
SWITCHES = ("create", "update", "delete", "dry_run")  # checked in this order
TEXTS = (("user", USER_MAX), ("remote_addr", REMOTE_ADDR_MAX), ("comment", COMMENT_MAX))


@dataclass(frozen=True, kw_only=True)
class ImportRequest:
    """What a version import is asked to do. Defaults: the task's. Switched-off kinds
    (create, update, delete) are counted as `skipped`, never written."""

    models: tuple[str, ...] | None = None  # model names; None: every versioned model
    user: str | None = None
    remote_addr: str | None = None
    comment: str | None = None
    dry_run: bool = False
    create: bool = True
    update: bool = True
    delete: bool = True
    max_changes: int | None = None
    repair: bool = False

    def __post_init__(self) -> None:
        for name in SWITCHES:
            _check_switch(name, getattr(self, name))
        _check_limit(self.max_changes)
        for name, limit in TEXTS:
            _check_text(name, getattr(self, name), limit)
        _check_switch("repair", self.repair)
        if self.models is not None:
            object.__setattr__(self, "models", _model_names(self.models))

    @classmethod
    def parse(cls, **arguments: Any) -> ImportRequest:
        """The request these keyword arguments (the task's) ask for; an unknown keyword
        or a bad value is a `ValidationError` naming it."""
        unknown = [name for name in arguments if name not in FIELDS]
        if unknown:
            raise ValidationError(
                f"unknown version import argument(s) {', '.join(map(shown, unknown[:5]))}; "
                f"valid: {', '.join(FIELDS)}"
            )
        return cls(**arguments)

    def as_kwargs(self) -> dict[str, Any]:
        """The request as the task's JSON keyword arguments (what `--enqueue` sends)."""
        kwargs = dataclasses.asdict(self)
        kwargs["models"] = None if self.models is None else list(self.models)
        return kwargs

    @property
    def writes_everything(self) -> bool:
        """A real run of every kind with no limit: nothing needs counting before writing."""
        return (
            self.create
            and self.update
            and self.delete
            and not self.dry_run
            and (self.max_changes is None)
        )


FIELDS = tuple(f.name for f in dataclasses.fields(ImportRequest))


def _check_switch(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValidationError(f"{name}={value!r} must be true or false")


def _check_limit(limit: Any) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise ValidationError(f"max_changes={limit!r} must be a whole number or None")
    if limit is not None and limit < 0:
        raise ValidationError(f"max_changes={limit!r} must be 0 or more (or None: no limit)")


def _check_text(name: str, value: Any, limit: int) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name}={shown(value)} must be a string or None")
    if value is not None and "\x00" in value:
        raise ValidationError(f"{name}={shown(value)} contains a NUL character")
    if value is not None and len(value) > limit:
        raise ValidationError(f"{name}={value[:60]!r}... is longer than {limit} characters")


def _model_names(names: Any) -> tuple[str, ...]:
    """`names` (a list or tuple of model names, at least one) as a tuple."""
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ValidationError(f"models={names!r} must be a list of model names (or None for all)")
    if not names:
        raise ValidationError(
            f"models={names!r} names no model; pass None to import every versioned model"
        )
    for name in names:
        if not isinstance(name, str):
            raise ValidationError(f"models: {name!r} is not a model name (a string)")
    return tuple(names)
