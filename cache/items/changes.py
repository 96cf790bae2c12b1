"""The bookkeeping of data-driven rebuilds: which (project, app, item) scopes committed
changes touched, when each one's rebuild is due, sent and last built, and how fresh an
item is. Rows of `cache_changes`; every time is the database's clock in epoch
milliseconds (never a worker's).

Debounce, with `delay` (CACHEWORK_REBUILD_DELAY) and `every` (CACHEWORK_REBUILD_EVERY):

- a change to an item with no rebuild pending makes one due at
  max(change + delay, start of the item's last rebuild + every);
- more changes while it is pending do not move it: a burst is one rebuild, never one per row;
- when a rebuild finishes, a change seen after it started makes the next one due at
  max(that change + delay, its start + every); otherwise nothing is pending.

So while changes keep coming an item is rebuilt at most once per `every` seconds, and the
rebuild that reads a change starts at most max(delay, every) seconds after it (plus the
follower's tick). Any rebuild of the scope counts, an explicit `sync_cache` too
(`built`), unless its plugin raised. A sent rebuild that never reports back (its worker was
killed and the broker did not deliver it again, or its plugin raised) is sent again after
`resend`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework.cache.items.locks import ALL, db_now_ms, upsert_insert
from cachework.cache.items.store import validate_key
from cachework.schema import cache_change_cursor, cache_changes, cache_items

SITE = ""  # the site-wide scope's `project` ('' is never a project key)
BATCH = 500

Scope = tuple[str | None, str, str]  # (project or None for site-wide, app, item name or '*')


def _project(project: str | None) -> str:
    return SITE if project is None else project


def now_ms(conn: sa.Connection | Session) -> int:
    """The database's clock, in epoch milliseconds."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    return conn.execute(sa.select(db_now_ms(bind.dialect.name))).scalar_one()


def _larger(a: sa.ColumnElement, b: sa.ColumnElement) -> sa.ColumnElement:
    return sa.case((a > b, a), else_=b)


def mark(
    conn: sa.Connection, scopes: Iterable[Scope], now: int, delay_ms: int, every_ms: int
) -> int:
    """Record a change seen at `now` to each scope (see the module's debounce rules);
    returns the count of scopes. Part of the caller's transaction."""
    rows = [
        {
            "project": _project(p),
            "app_name": a,
            "name": n,
            "changed_ms": now,
            "due_ms": now + delay_ms,
        }
        for p, a, n in sorted(set(scopes), key=lambda s: (_project(s[0]), s[1], s[2]))
    ]
    c = cache_changes.c
    for start in range(0, len(rows), BATCH):
        stmt = upsert_insert(conn, cache_changes).values(rows[start : start + BATCH])
        after_last = sa.func.coalesce(c.built_ms, 0) + every_ms
        due = sa.case(
            (c.due_ms.is_(None), _larger(stmt.excluded.due_ms, after_last)),
            else_=c.due_ms,
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[c.project, c.app_name, c.name],
                set_={"changed_ms": _larger(stmt.excluded.changed_ms, c.changed_ms), "due_ms": due},
            )
        )
    return len(rows)


def claim_due(conn: sa.Connection, now: int, resend_ms: int, limit: int = BATCH) -> list[Scope]:
    """Take the scopes whose rebuild is due and not sent (or sent over `resend_ms` ago):
    marked sent at `now` in one statement, so a second dispatcher does not send them too
    (PostgreSQL: it skips the rows this one has locked)."""
    c = cache_changes.c
    claimable = sa.and_(c.due_ms <= now, sa.or_(c.sent_ms.is_(None), c.sent_ms < now - resend_ms))
    due = sa.select(c.project, c.app_name, c.name).where(claimable).order_by(c.due_ms).limit(limit)
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    claimed = conn.execute(
        sa.update(cache_changes)
        .where(sa.tuple_(c.project, c.app_name, c.name).in_(due), claimable)
        .values(sent_ms=now)
        .returning(c.project, c.app_name, c.name)
    )
    return [(None if p == SITE else p, a, n) for p, a, n in claimed]


def unsend(conn: sa.Connection, scopes: Iterable[Scope]) -> None:
    """Scopes whose rebuild could not be sent: due again at the next dispatch."""
    c = cache_changes.c
    for project, app_name, name in scopes:
        conn.execute(
            sa.update(cache_changes)
            .where(c.project == _project(project), c.app_name == app_name, c.name == name)
            .values(sent_ms=None)
        )


def built(
    conn: sa.Connection | Session,
    project: str | None,
    app_name: str,
    names: list[str] | None,
    started_ms: int,
    delay_ms: int,
    every_ms: int,
) -> int:
    """A rebuild of `names` (None: every item) of one scope that started at `started_ms`
    is done: what changed before it started is no longer pending (see the module's rules).
    Returns the rows updated."""
    c = cache_changes.c
    later = c.changed_ms > started_ms
    query = sa.update(cache_changes).where(c.project == _project(project), c.app_name == app_name)
    if names is not None:
        query = query.where(c.name.in_([n for n in names if n != ALL]))
    next_due = _larger(c.changed_ms + delay_ms, sa.literal(started_ms + every_ms, sa.BigInteger))
    return conn.execute(
        query.values(
            built_ms=_larger(
                sa.func.coalesce(c.built_ms, 0), sa.literal(started_ms, sa.BigInteger)
            ),
            sent_ms=None,
            due_ms=sa.case(
                (later, sa.case((c.sent_ms.is_(None), c.due_ms), else_=next_due)), else_=None
            ),
        )
    ).rowcount


# --- reads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """How fresh one item is: when it was last written (`built_at`, None: never), whether a
    rebuild is pending for a change (`pending`: a page can show "updating"), and when the
    last change to what it reads was seen (`changed_at`, None: none seen)."""

    built_at: datetime | None
    pending: bool
    changed_at: datetime | None


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def freshness(session: Session, app_name: str, name: str, project: object = None) -> Freshness:
    """The item's `Freshness` (project None: the site-wide item); one query."""
    project = validate_key(project)
    c = cache_changes.c
    items = cache_items.c
    built = (
        sa.select(items.updated_at)
        .where(
            items.project.is_(None) if project is None else items.project == project,
            items.app_name == app_name,
            items.name == name,
        )
        .scalar_subquery()
    )
    changes = (
        sa.select(
            sa.func.max(c.changed_ms).label("changed"),
            sa.func.count(c.due_ms).label("pending"),
        )
        .where(c.project == _project(project), c.app_name == app_name, c.name.in_([name, ALL]))
        .subquery()
    )
    row = session.execute(sa.select(built, changes.c.changed, changes.c.pending)).one()
    return Freshness(row[0], bool(row[2]), _time(row[1]))


def pending(conn: sa.Connection | Session) -> list[dict]:
    """Every pending scope with its times (ms): for status output and tests."""
    c = cache_changes.c
    rows = conn.execute(
        sa.select(c.project, c.app_name, c.name, c.changed_ms, c.due_ms, c.sent_ms)
        .where(c.due_ms.is_not(None))
        .order_by(c.due_ms)
    )
    return [
        {
            "project": None if r.project == SITE else r.project,
            "app_name": r.app_name,
            "name": r.name,
            "changed_ms": r.changed_ms,
            "due_ms": r.due_ms,
            "sent_ms": r.sent_ms,
        }
        for r in rows
    ]


# --- the follower's place in the log ---------------------------------------------------------


def read_cursor(conn: sa.Connection, name: str) -> tuple[str, str | None] | None:
    """(cursor, epoch) of the follower of log `name`, or None before its first pass."""
    row = conn.execute(
        sa.select(cache_change_cursor.c.cursor, cache_change_cursor.c.epoch).where(
            cache_change_cursor.c.name == name
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def move_cursor(
    conn: sa.Connection, name: str, before: str | None, after: str, epoch: str | None
) -> bool:
    """Move the cursor from `before` (None: none yet) to `after`, in the caller's
    transaction; False when another follower moved it first (the caller rolls back)."""
    t = cache_change_cursor
    if before is None:
        values = {"name": name, "cursor": after, "epoch": epoch}
        insert = upsert_insert(conn, t).values(values).on_conflict_do_nothing()
        return conn.execute(insert).rowcount == 1
    query = sa.update(t).where(t.c.name == name, t.c.cursor == before)
    return conn.execute(query.values(cursor=after, epoch=epoch)).rowcount == 1
