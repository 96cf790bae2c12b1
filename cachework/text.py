"""Bounded text: the one check of "a string of at most N characters, without NUL".

Project keys, app and item names, users, table names and text keys all end in bounded
PostgreSQL text columns (NUL cannot be stored at all), so every entry point checks them
alike and names the bad value, cut (`shown`) so a 10 MB value is never repeated whole.
"""

from __future__ import annotations

from cachework.errors import ValidationError, shown
from cachework.schema import NAME_MAX


def fits(value: object, limit: int = NAME_MAX, *, empty: bool = False, blank: bool = True) -> bool:
    """True for a string of at most `limit` characters without NUL; an empty one only
    with `empty`, an all-whitespace one only with `blank`."""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        return False
    if not value:
        return empty
    return blank or bool(value.strip())


def bounded(
    field: str,
    value: object,
    limit: int = NAME_MAX,
    *,
    empty: bool = False,
    blank: bool = True,
    none: str | None = None,
) -> str | None:
    """`value` if it `fits`, else a ValidationError naming `field` and the value.

    `none` accepts None and names what None means in the message (e.g. "None" or
    "None (site-wide)"); without it None is refused like any non-string."""
    if value is None and none is not None:
        return None
    if fits(value, limit, empty=empty, blank=blank):
        return value  # type: ignore[return-value]  # fits() checked it is a str
    what = "a string" if empty else "a non-empty string"
    alternative = f", or {none}" if none is not None else ""
    raise ValidationError(
        f"{field}={shown(value)} must be {what} of <= {limit} characters without NUL" + alternative
    )
