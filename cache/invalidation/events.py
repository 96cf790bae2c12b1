"""The invalidation event: strict validation, JSON form, and ordering of event ids.

Pure functions only (no I/O), so the rules can be tested from tables and with hypothesis.
An event names a table and, optionally, the primary keys of the records that changed (no
keys = the whole table), plus the project cache scope (project, app name, item names)
whose items a `cachework.process_invalidation` task rebuilds.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cachework.errors import NotFoundError, ValidationError, shown
from cachework.records import json_value
from cachework.schema import NAME_MAX
from cachework.text import bounded

VERSION = 1
MAX_TEXT = NAME_MAX  # table names, text keys, project, app and item names
# The largest stored entry a reader parses (10,000 keys of 255 characters fit in 3 MB);
# a bigger one is not parsed: its table is read from its start, or every table dropped.
MAX_EVENT_CHARS = 8 * 1024 * 1024
_TABLE_RE = re.compile(r'"table"\s*:\s*"((?:[^"\\]|\\.){1,1000})"')
ID_RE = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")

# What a publisher may know about a table: its name, or its name and a function that turns
# a key into the table's primary-key type (raising ValidationError naming the key).
KeyCoercer = Callable[[object], object]
KnownTables = Mapping[str, KeyCoercer | None] | Collection[str]


@dataclass(frozen=True)
class Event:
    """One invalidation. `keys` None means every record of `table`."""

    table: str
    keys: tuple[Any, ...] | None = None
    project: str | None = None
    app_name: str | None = None
    names: tuple[str, ...] | None = None

    def to_json(self) -> str:
        """The stored form: compact JSON with a format version."""
        body: dict[str, Any] = {"v": VERSION, "table": self.table}
        if self.keys is not None:
            body["keys"] = [json_value(key) for key in self.keys]
        for field in ("project", "app_name"):
            if getattr(self, field) is not None:
                body[field] = getattr(self, field)
        if self.names is not None:
            body["names"] = list(self.names)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _text(field: str, value: object, required: bool = False) -> str | None:
    """Bounded text, not all whitespace; None too unless `required`."""
    return bounded(field, value, MAX_TEXT, blank=False, none=None if required else "None")


# The key types an event carries: those whose JSON form (`json_value`) the receiving
# table's key coercer (`cachework.records.coerce`) turns back into the same key. Not floats
# (a float key of an integer table, 1.5, names no record; equality of floats is not a key).
KEY_TYPES = (int, str, uuid.UUID, Decimal, dt.date, dt.time)


def _scalar_key(index: int, key: object) -> object:
    if isinstance(key, bool) or not isinstance(key, KEY_TYPES):
        raise ValidationError(
            f"keys[{index}]={shown(key)} must be a primary key (an integer, string, UUID, "
            "decimal, date, time or datetime)"
        )
    if isinstance(key, str):
        bounded(f"keys[{index}]", key, MAX_TEXT, empty=True)
    return key


def _coercer(table: str, known: KnownTables | None) -> KeyCoercer | None:
    if known is None:
        return None
    if table not in known:
        valid = ", ".join(sorted(known)) or "none"
        raise NotFoundError(f"table={shown(table)} is not a known table (known tables: {valid})")
    return known.get(table) if isinstance(known, Mapping) else None


def _keys(keys: object, max_keys: int, coerce: KeyCoercer | None) -> tuple[Any, ...] | None:
    if keys is None:
        return None
    if isinstance(keys, str | bytes) or not isinstance(keys, list | tuple):
        raise ValidationError(
            f"keys={shown(keys)} must be a list of primary keys, or None for the whole table"
        )
    if not keys:
        raise ValidationError("keys=[] names no record; pass None to invalidate the whole table")
    if len(keys) > max_keys:
        raise ValidationError(
            f"keys has {len(keys)} entries; at most {max_keys} per event "
            "(CACHEWORK_INVALIDATION_MAX_KEYS), or None for the whole table"
        )
    out: dict[Any, None] = {}
    for index, key in enumerate(keys):
        key = _scalar_key(index, key)
        if coerce is not None:
            try:
                key = coerce(key)
            except ValidationError as exc:
                raise ValidationError(f"keys[{index}]: {exc}") from None
        out[key] = None  # de-duplicated, first-seen order
    return tuple(out)


def _names(names: object) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, list | tuple) or not names:
        raise ValidationError(
            f"names={shown(names)} must be a non-empty list of item names or None"
        )
    return tuple(dict.fromkeys(_text(f"names[{i}]", n, True) for i, n in enumerate(names)))


def validate_event(
    table: object,
    keys: object = None,
    project: object = None,
    app_name: object = None,
    names: object = None,
    *,
    known_tables: KnownTables | None = None,
    max_keys: int = 10_000,
) -> Event:
    """Check every field; ValidationError/NotFoundError names the bad one. Pure.

    With `known_tables`, the table must be one of them, and keys are coerced to the
    table's primary-key type where a coercer is given.
    """
    table = _text("table", table, required=True)
    coerce = _coercer(table, known_tables)
    return Event(
        table=table,
        keys=_keys(keys, max_keys, coerce),
        project=_text("project", project),
        app_name=_text("app_name", app_name),
        names=_names(names),
    )


def decode_event(raw: object, max_keys: int = 10_000) -> Event:
    """Parse a stored entry (bytes or str of JSON); ValidationError if it is malformed.

    A reader that cannot decode an entry must not skip it: `table_of` tells which table
    to invalidate whole (None: any table, so every cached table is dropped)."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("event is not UTF-8") from None
    if not isinstance(raw, str):
        raise ValidationError(f"event {repr(raw)[:80]} is not a JSON string")
    if len(raw) > MAX_EVENT_CHARS:
        raise ValidationError(f"event of {len(raw)} characters is over {MAX_EVENT_CHARS}")
    try:
        body = json.loads(raw, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        raise ValidationError(
            f"event {raw[:80]!r} has the key {shown(exc.key)} twice (which one is meant?)"
        ) from None
    except (ValueError, RecursionError):
        raise ValidationError(f"event {raw[:80]!r} is not JSON") from None
    if not isinstance(body, dict):
        raise ValidationError(f"event {raw[:80]!r} is not a JSON object")
    if body.get("v") != VERSION:
        raise ValidationError(f"event version v={body.get('v')!r} is not {VERSION}")
    unknown = set(body) - {"v", "table", "keys", "project", "app_name", "names"}
    if unknown:
        raise ValidationError(f"event has unknown field(s) {repr(sorted(unknown))[:120]}")
    return validate_event(
        body.get("table"),
        body.get("keys"),
        body.get("project"),
        body.get("app_name"),
        body.get("names"),
        max_keys=max_keys,
    )


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: `json.loads` keeps the last of duplicates, so
    `{"table": "a", "table": "b"}` would silently name b while a writer may have meant a."""
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:
            raise _DuplicateKey(key)
        body[key] = value
    return body


class _Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates kept (for `table_of`)."""


def table_of(raw: object) -> str | None:
    """The table a stored entry names, for an entry `decode_event` refused: its `table`
    field if exactly one can be read, else None (the entry may name any table; an entry
    with the key twice may mean either)."""
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("utf-8", "replace")
    if not isinstance(raw, str):
        return None
    if len(raw) <= MAX_EVENT_CHARS:
        try:
            body = json.loads(raw, object_pairs_hook=_Pairs)
        except (ValueError, RecursionError):
            body = None
        else:
            if not isinstance(body, _Pairs):
                return None
            tables = [value for key, value in body if key == "table"]
            if len(tables) != 1:
                return None
            return tables[0] if isinstance(tables[0], str) and tables[0] else None
    # An oversize or truncated entry: its start names the table, unless the key may come
    # twice (once more later, or spelt with escapes the pattern does not read).
    match = _TABLE_RE.search(raw[:4096])
    if match is None or raw.count('"table"') != 1 or "\\u" in raw:
        return None
    try:
        table = json.loads(f'"{match.group(1)}"')
    except ValueError:
        return None
    return table or None


# --- event ids --------------------------------------------------------------------------
# Redis stream ids are "<ms>-<seq>", database ids are integers; "0" is "nothing yet".
# Compare them as number pairs, never as strings ("10" < "9" as strings).


def id_key(event_id: object) -> tuple[int, int]:
    """`event_id` as a sortable pair; ValidationError naming it if malformed."""
    if isinstance(event_id, bytes):
        event_id = event_id.decode("ascii", "replace")
    if isinstance(event_id, int) and not isinstance(event_id, bool) and event_id >= 0:
        return (event_id, 0)
    match = ID_RE.match(event_id) if isinstance(event_id, str) else None
    if match is None:
        raise ValidationError(
            f"event_id={event_id!r} is not an event id ('<ms>-<seq>' or an integer)"
        )
    return (int(match.group(1)), int(match.group(2) or 0))


def is_after(a: str, b: str) -> bool:
    """True if event id `a` comes after `b`."""
    return id_key(a) > id_key(b)
