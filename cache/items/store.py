"""Project cache items: JSON documents keyed by (project, app name, item name).

Usable from any process that has a Session (a web app reads items with one query). Fixes
the reference's flaws: every write moves `updated_at`; an item with no project is a
site-wide item in its own right, unique per (app, name) and never matched as "any
project"; project keys are checked (their canonical form is the app's business: `cache.
items.projects.ProjectSource.canonical`); data that is not JSON or too large is refused
with an error naming the item. Writes are upserts (ON CONFLICT) on PostgreSQL and SQLite alike.
The caller owns the transaction.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cachework.errors import ValidationError, shown
from cachework.schema import NAME_MAX, UTCDateTime, cache_items, cache_items_key
from cachework.text import bounded, fits

DATA_TYPES = ("json",)
DEFAULT_MAX_BYTES = 1024 * 1024
BATCH = 5_000  # rows per statement (the batch travels as one JSON parameter)


@dataclass(frozen=True)
class CacheItem:
    """One stored item, as plain values (never an ORM object shared across sessions)."""

    project: str | None
    app_name: str
    name: str
    data_type: str
    data: Any
    user: str | None
    created_at: datetime
    updated_at: datetime


# --- validation -------------------------------------------------------------------------


def validate_key(project: object) -> str | None:
    """A project key as stored, or None for site-wide items: whatever the app's key type.

    A string is used as given (pass the canonical form: `ProjectSource.canonical`, e.g.
    lowercase hyphenated for uuid keys); a `uuid.UUID` becomes its canonical string and an
    int its decimal digits. Anything else, an empty string, one over NAME_MAX characters
    or with NUL is a ValidationError naming the value."""
    if project is None:
        return None
    if isinstance(project, uuid.UUID):
        return str(project)
    if isinstance(project, int) and not isinstance(project, bool):
        return str(project)
    if not fits(project):
        raise ValidationError(
            f"project={shown(project)} must be a project key (a non-empty string of <= "
            f"{NAME_MAX} characters without NUL, an int or a uuid.UUID) or None (site-wide)"
        )
    return project


def validate_name(field: str, value: object) -> str:
    """A non-empty string of at most NAME_MAX characters, without NUL (PostgreSQL text)."""
    return bounded(field, value)  # type: ignore[return-value]  # None is refused


def validate_user(user: object) -> str | None:
    """The user recorded on written items: None, or a string of <= NAME_MAX without NUL."""
    return bounded("user", user, empty=True, none="None")


def _label(project: str | None, app_name: str, name: str) -> str:
    return f"{app_name}/{name} ({'site-wide' if project is None else 'project ' + project})"


def encode(
    project: str | None, app_name: str, name: str, data: Any, max_bytes: int = DEFAULT_MAX_BYTES
) -> str:
    """Check `data` is JSON (no NaN) within `max_bytes`; returns its compact encoding."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"cache item {_label(project, app_name, name)}: data is not JSON-serializable: {exc}"
        ) from None
    size = len(text.encode())
    if size > max_bytes:
        raise ValidationError(
            f"cache item {_label(project, app_name, name)}: data is {size} bytes, "
            f"over the limit of {max_bytes} (CACHEWORK_CACHE_ITEM_MAX_BYTES)"
        )
    return text


# --- clock --------------------------------------------------------------------------------

_clock_lock = threading.Lock()
_last = datetime.min.replace(tzinfo=UTC)


def now() -> datetime:
    """UTC now, strictly increasing within this process (two writes never share a time)."""
    global _last
    with _clock_lock:
        current = datetime.now(UTC)
        if current <= _last:
            current = _last + timedelta(microseconds=1)
        _last = current
        return current


# --- writes -------------------------------------------------------------------------------


def _row(
    project: object,
    app_name: str,
    name: str,
    data: Any,
    user: str | None,
    data_type: str,
    max_bytes: int,
) -> dict:
    """A validated row for the batch document; `d` holds the data's JSON text."""
    project = validate_key(project)
    validate_name("app_name", app_name)
    validate_name("name", name)
    if data_type not in DATA_TYPES:
        raise ValidationError(f"data_type={data_type!r} is not one of {', '.join(DATA_TYPES)}")
    validate_user(user)
    text = encode(project, app_name, name, data, max_bytes)
    return {"p": project, "a": app_name, "n": name, "t": data_type, "d": text, "u": user}


_FIELDS = ("p", "a", "n", "t", "d", "u")


def _sqlite_next_microsecond(column: sa.ColumnElement) -> sa.ColumnElement:
    """`column` + 1 µs on SQLite, where times are 'YYYY-MM-DD HH:MM:SS.ffffff' text (so
    they also compare correctly as strings)."""
    text = functools.partial(sa.func.substr, sa.type_coerce(column, sa.String), type_=sa.String)
    micros = sa.cast(text(21, 6), sa.Integer)
    next_second = sa.func.strftime("%Y-%m-%d %H:%M:%S", text(1, 19), "+1 seconds", type_=sa.String)
    return sa.case(
        (micros < 999_999, text(1, 20) + sa.func.printf("%06d", micros + 1, type_=sa.String)),
        else_=next_second + ".000000",
    )


@functools.cache
def _upsert_statement(dialect: str) -> sa.Insert:
    """INSERT ... SELECT FROM <the batch as one JSON parameter> ON CONFLICT DO UPDATE.

    One statement and two parameters per batch, whatever its size: compiled once and
    cached, and the data's JSON text (already made for validation) is reused as is."""
    rows = sa.bindparam("rows", type_=sa.Text)
    stamp = sa.bindparam("stamp", type_=UTCDateTime())
    if dialect == "postgresql":
        batch = (
            sa.func.json_to_recordset(sa.cast(rows, postgresql.JSON))
            .table_valued(*(sa.column(f, sa.Text) for f in _FIELDS))
            .render_derived(with_types=True)
        )
        fields = [batch.c[f] for f in _FIELDS]
        fields[4] = sa.cast(batch.c.d, postgresql.JSON)
        select = sa.select(*fields, stamp, stamp)
        stmt = postgresql.insert(cache_items)
    elif dialect == "sqlite":
        batch = sa.func.json_each(rows).table_valued("value")
        fields = [sa.func.json_extract(batch.c.value, f"$.{f}") for f in _FIELDS]
        # SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT (parsing ambiguity).
        select = sa.select(*fields, stamp, stamp).where(sa.true())
        stmt = sqlite.insert(cache_items)
    else:  # pragma: no cover - the two databases cachework supports
        raise ValidationError(f"database dialect {dialect!r} is not supported (postgresql, sqlite)")
    columns = ["project", "app_name", "name", "data_type", "data", "user"]
    stmt = stmt.from_select([*columns, "created_at", "updated_at"], select)
    # Never move backwards (another process's stamp may be older, or its clock lag): at
    # least the stored time plus one microsecond.
    updated = stmt.excluded.updated_at
    if dialect == "postgresql":
        one = sa.text("interval '1 microsecond'")
        updated = sa.func.greatest(updated, cache_items.c.updated_at + one)
    else:
        updated = sa.case(
            (updated > cache_items.c.updated_at, updated),
            else_=_sqlite_next_microsecond(cache_items.c.updated_at),
        )
    return stmt.on_conflict_do_update(
        index_elements=list(cache_items_key),
        set_={
            "data_type": stmt.excluded.data_type,
            "data": stmt.excluded.data,
            "user": stmt.excluded.user,
            "updated_at": updated,
        },
    )


def _upsert(session: Session, rows: list[dict], stamp: datetime) -> None:
    stmt = _upsert_statement(session.get_bind().dialect.name)
    session.execute(stmt, {"rows": json.dumps(rows, ensure_ascii=False), "stamp": stamp})


def set_item(
    session: Session,
    app_name: str,
    name: str,
    data: Any,
    project: str | None = None,
    user: str | None = None,
    data_type: str = "json",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Create or replace one item (project None = site-wide); always moves `updated_at`."""
    _upsert(session, [_row(project, app_name, name, data, user, data_type, max_bytes)], now())


def set_items(
    session: Session,
    items: Iterable[Mapping[str, Any]],
    user: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> int:
    """Create or replace many items, one INSERT ... ON CONFLICT statement per batch.

    Each item is a mapping with `app_name`, `name`, `data` and optionally `project`,
    `user` and `data_type`. Everything is validated before the first statement, so bad
    input writes nothing. Within one call the last item for a key wins. Returns the count
    of distinct items written.
    """
    stamp = now()
    rows: dict[tuple, dict] = {}
    for item in items:
        if not isinstance(item, Mapping):
            raise ValidationError(f"cache item {item!r} must be a mapping with app_name/name/data")
        missing = [k for k in ("app_name", "name", "data") if k not in item]
        if missing:
            raise ValidationError(f"cache item {dict(item)!r} lacks {', '.join(missing)}")
        row = _row(
            item.get("project"),
            item["app_name"],
            item["name"],
            item["data"],
            item.get("user", user),
            item.get("data_type", "json"),
            max_bytes,
        )
        rows[(row["p"], row["a"], row["n"])] = row
    values = list(rows.values())
    for start in range(0, len(values), BATCH):
        _upsert(session, values[start : start + BATCH], stamp)
    return len(values)


# --- reads --------------------------------------------------------------------------------


def _project_clause(project: str | None) -> sa.ColumnElement[bool]:
    if project is None:
        return cache_items.c.project.is_(None)
    return cache_items.c.project == project


def _item(row: sa.Row) -> CacheItem:
    return CacheItem(
        row.project,
        row.app_name,
        row.name,
        row.data_type,
        row.data,
        row.user,
        row.created_at,
        row.updated_at,
    )


_COLUMNS = [c for c in cache_items.c if c.name != "id"]


def get_item(
    session: Session, app_name: str, name: str, project: str | None = None
) -> CacheItem | None:
    """The item, or None. `project=None` reads the site-wide item, never a project's."""
    project = validate_key(project)
    row = session.execute(
        sa.select(*_COLUMNS).where(
            _project_clause(project), cache_items.c.app_name == app_name, cache_items.c.name == name
        )
    ).one_or_none()
    return None if row is None else _item(row)


def get_update_time(
    session: Session, app_name: str, name: str, project: str | None = None
) -> datetime | None:
    """When the item was last written (UTC-aware), or None if it does not exist."""
    project = validate_key(project)
    return session.execute(
        sa.select(cache_items.c.updated_at).where(
            _project_clause(project), cache_items.c.app_name == app_name, cache_items.c.name == name
        )
    ).scalar_one_or_none()


def get_project_items(
    session: Session, project: str | None, app_name: str | None = None
) -> list[CacheItem]:
    """All items of one project (None: the site-wide items), optionally of one app."""
    project = validate_key(project)
    query = sa.select(*_COLUMNS).where(_project_clause(project))
    if app_name is not None:
        query = query.where(cache_items.c.app_name == app_name)
    query = query.order_by(cache_items.c.app_name, cache_items.c.name)
    return [_item(row) for row in session.execute(query)]


def delete_items(
    session: Session,
    project: str | None = None,
    app_name: str | None = None,
    name: str | None = None,
    *,
    site_wide: bool = False,
) -> int:
    """Delete the matching items; returns the count.

    Arguments are filters: None means "any" (so no arguments deletes every item);
    `site_wide=True` limits the delete to items with no project.
    """
    project = validate_key(project)
    if site_wide and project is not None:
        raise ValidationError(f"project={project!r} contradicts site_wide=True")
    query = sa.delete(cache_items)
    if site_wide:
        query = query.where(cache_items.c.project.is_(None))
    elif project is not None:
        query = query.where(cache_items.c.project == project)
    if app_name is not None:
        query = query.where(cache_items.c.app_name == app_name)
    if name is not None:
        query = query.where(cache_items.c.name == name)
    return session.execute(query).rowcount


def app_names(session: Session) -> list[str]:
    """The app names that have stored items (to accept deletes of retired apps)."""
    return list(
        session.execute(sa.select(cache_items.c.app_name).distinct().order_by("app_name")).scalars()
    )
