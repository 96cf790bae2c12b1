"""The change follower: reads the invalidation log for changes to what project cache
items read, marks the scopes they touch, and sends their rebuilds when due.

A tracked (or trigger-captured) write to a table a plugin declares (`depends_on`,
cache/items/reads.py) leaves, in the writer's transaction, an outbox row for a virtual
cached table; the relay moves it to the log. Each worker node's elected process runs this
loop over the log:

1. Follow: read the entries after the follower's cursor (kept in the app database), map
   them to (project, app, item) scopes and mark those (cache/items/changes.py) in the same
   transaction that moves the cursor. A follower that dies before its commit leaves the
   entries to be read again; two nodes' followers race on the cursor and the loser's
   transaction rolls back (it reads again from the new place). A request exists exactly
   when the change committed, and survives any worker.
2. Dispatch: claim the scopes whose rebuild is due (marked sent, so one dispatcher sends
   each) and send one `cachework.rebuild_changed` task per (project, app). A task that is
   never reported done (a killed worker whose message the broker did not deliver again)
   is sent again after CACHEWORK_REBUILD_RESEND seconds.

A log that lost entries (an epoch change: a Redis that restarted empty or failed over;
a gap: trimmed past the cursor) may have held changes: every declared item of every
project is marked, the full sync's work, rather than any rebuild missed. The first pass
starts at the log's head: changes from before the follower ever ran are the full sync's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from itertools import groupby

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework import instruments
from cachework.cache.invalidation import InvalidationLog
from cachework.cache.invalidation.events import Event, decode_event, table_of
from cachework.cache.invalidation.listener import ReconnectingLoop
from cachework.cache.invalidation.node_lock import NodeLock
from cachework.cache.invalidation.outbox import missing_table
from cachework.cache.items import changes
from cachework.cache.items.locks import ALL
from cachework.cache.items.reads import ItemReads
from cachework.errors import (
    LogError,
    LogUnavailable,
    TransientError,
    ValidationError,
    transient_errors,
)

log = logging.getLogger(__name__)
CURSOR = "changes"  # the follower's row in cache_change_cursor
FOREIGN_MAX = 10_000
NO_TABLES_WAIT = 5.0  # seconds between looks for the tables `cachework initdb` makes
Send = Callable[[str | None, str, list[str] | None], None]


class ChangeFollower(ReconnectingLoop):
    """The follow-and-dispatch loop (module docstring), a daemon thread."""

    name = "cachework-change-follower"
    recoverable = (LogUnavailable, LogError, TransientError)

    def __init__(
        self,
        engine: sa.Engine,
        source: InvalidationLog,
        item_reads: ItemReads,
        send: Send,
        *,
        delay: float,
        every: float,
        resend: float,
        tick: float = 0.25,
        elector: NodeLock | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.source = source
        self.item_reads = item_reads
        self.send = send
        self.delay_ms = int(delay * 1000)
        self.every_ms = int(every * 1000)
        self.resend_ms = int(resend * 1000)
        self.tick = tick
        self.elector = elector
        self.stats = {"entries": 0, "marked": 0, "sent": 0, "lost": 0, "races": 0}
        self._cursor: str | None = None
        self._foreign_seen: dict[str, None] = {}
        self._told_no_tables = False

    # --- the loop ---------------------------------------------------------------------------

    def on_iteration(self) -> None:
        if self.elector is not None and not self.elector.acquire():
            self._stop.wait(1.0)
            return
        try:
            read = self.follow_once()
            self.dispatch_once()
        except sa.exc.SQLAlchemyError as exc:
            if not missing_table(exc):
                raise
            if not self._told_no_tables:  # a worker may start before `cachework initdb`
                log.warning("change follower: cachework's tables are missing; waiting for them")
                self._told_no_tables = True
            self._stop.wait(NO_TABLES_WAIT)
            return
        if read == 0 and self._cursor is not None:
            self.source.wait(self._cursor, self.tick, self._stop)

    def on_connection_error(self, exc: BaseException, delay: float) -> float:
        log.warning("change follower: %s; retrying in %.1fs", exc, delay)
        return delay

    def on_stop(self) -> None:
        if self.elector is not None:
            self.elector.release()

    # --- 1. follow --------------------------------------------------------------------------

    def follow_once(self, count: int = 500) -> int:
        """Read one batch after the cursor and mark what it touches; returns entries read."""
        with transient_errors("database"), self.engine.connect() as conn:
            stored = changes.read_cursor(conn, CURSOR)
        if stored is None:  # the first pass: from the head on
            state = self.source.state()
            with transient_errors("database"), self.engine.begin() as conn:
                changes.move_cursor(conn, CURSOR, None, state.head, state.epoch)
            self._cursor = state.head
            return 0
        cursor, epoch = stored
        batch = self.source.read(cursor, count)
        lost = batch.gap or (epoch is not None and batch.epoch != epoch)
        # An entry whose id its log never handed out comes back on every read: once.
        foreign = [(i, raw) for i, raw in batch.foreign if i not in self._foreign_seen]
        self._foreign_seen.update(dict.fromkeys(i for i, _raw in foreign))
        while len(self._foreign_seen) > FOREIGN_MAX:
            del self._foreign_seen[next(iter(self._foreign_seen))]
        events = [self._event(raw) for _id, raw in [*batch.entries, *foreign]]
        last = batch.entries[-1][0] if batch.entries else cursor
        if lost:
            last = self.source.state().head
            self.stats["lost"] += 1
            log.warning(
                "change follower: the invalidation log lost entries (%s); every declared "
                "item of every project is marked for a rebuild",
                "trimmed past the cursor" if batch.gap else "its epoch changed",
            )
        if not events and not lost and last == cursor and batch.epoch == epoch:
            self._cursor = cursor
            return 0
        with transient_errors("database"), self.engine.begin() as conn:
            with Session(bind=conn) as session:  # the queries that map rows to projects
                if lost or any(e is None for e in events):
                    scopes = self.item_reads.every_scope(session)
                else:
                    scopes = self.item_reads.scopes(session, [e for e in events if e])
            if scopes:
                now = changes.now_ms(conn)
                self.stats["marked"] += changes.mark(
                    conn, scopes, now, self.delay_ms, self.every_ms
                )
            if not changes.move_cursor(conn, CURSOR, cursor, last, batch.epoch):
                self.stats["races"] += 1  # another node's follower moved it: read again
                conn.rollback()
                return len(events)
        self.stats["entries"] += len(events)
        self._cursor = last
        instruments.record_item_changes(dict(Counter(app for _p, app, _n in scopes)), {}, lost)
        return len(events) or int(lost)

    def _event(self, raw: object) -> Event | None:
        """The entry's event; one that cannot be read exactly counts as its table whole
        (None: it may name any table)."""
        try:
            return decode_event(raw, max_keys=10**9)
        except ValidationError:
            table = table_of(raw)
            return None if table is None else Event(table)

    # --- 2. dispatch ------------------------------------------------------------------------

    def dispatch_once(self) -> int:
        """Send the due rebuilds, one task per (project, app); returns tasks sent."""
        with transient_errors("database"), self.engine.begin() as conn:
            claimed = changes.claim_due(conn, changes.now_ms(conn), self.resend_ms)
        sent, by_app, unsent, failure = 0, Counter(), [], None
        scope_of = lambda s: (s[0] or "", s[1])  # noqa: E731
        for (_project, app_name), group in groupby(sorted(claimed, key=scope_of), key=scope_of):
            scopes = list(group)
            names = sorted({name for _p, _a, name in scopes})
            if failure is None:
                try:
                    self.send(scopes[0][0], app_name, None if ALL in names else names)
                    sent += 1
                    by_app[app_name] += 1
                    continue
                except Exception as exc:  # the broker: every later send would fail too
                    failure = exc
            unsent.extend(scopes)
        self.stats["sent"] += sent
        if by_app:
            instruments.record_item_changes({}, dict(by_app), False)
        if failure is not None:
            with transient_errors("database"), self.engine.begin() as conn:
                changes.unsend(conn, unsent)  # due again once the broker answers
            raise TransientError(
                f"could not send {len(unsent)} due rebuild(s): "
                f"{type(failure).__name__}: {str(failure)[:200]}"
            ) from failure
        return sent
