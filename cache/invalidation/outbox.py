"""The transactional outbox: an event is written in the caller's own transaction, and a
relay moves committed rows to the log at least once.

`publish(..., session=s)` inserts an outbox row through `s`; if the caller rolls back, the
row never existed, if it commits, the row waits for the relay. The relay (running in the
worker) reads rows oldest first, appends them to the log, then deletes them in one
transaction: killed between the append and the delete, it sends those rows again when it
restarts, which is harmless (applying an invalidation twice changes nothing). With the
database-backed log the append and the delete share the transaction: exactly once.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cache.invalidation.db_log import DatabaseLog
from cache.invalidation.events import Event
from cache.invalidation.listener import ReconnectingLoop
from cache.invalidation.log import InvalidationLog, log_failure
from cache.invalidation.tables import invalidation_outbox

log = logging.getLogger(__name__)
_PENDING = "cachework_outbox_relay"


def write_outbox(session: Session, event: Event, relay_log: InvalidationLog | None = None) -> int:
    """Insert `event` into the outbox in `session`'s transaction; returns the row id.

    With `relay_log`, a relay pass runs right after the session commits (best effort, for
    latency); the worker's relay is what guarantees delivery.
    """
    row_id = session.execute(
        invalidation_outbox.insert()
        .values(data=event.to_json())
        .returning(invalidation_outbox.c.id)
    ).scalar_one()
    if relay_log is not None:
        if not sa.event.contains(session, "after_commit", _after_commit):
            sa.event.listen(session, "after_commit", _after_commit)
        session.info[_PENDING] = relay_log
    return int(row_id)


def _after_commit(session: Session) -> None:
    relay_log = session.info.pop(_PENDING, None)
    if relay_log is None:
        return
    try:
        Relay(session.get_bind(), relay_log).run_once()
    except Exception as exc:  # best effort: the worker's relay delivers it later
        log.warning("eager outbox relay failed (the worker relay will retry): %s", exc)


class Relay:
    """Moves committed outbox rows to `target` (the log), oldest first."""

    def __init__(self, engine: sa.Engine, target: InvalidationLog, batch: int = 200):
        self.engine = engine
        self.target = target
        self.batch = batch

    def run_once(self) -> int:
        """Relay one batch; returns how many rows moved (0: the outbox is empty)."""
        try:
            with self.engine.connect() as conn, conn.begin() as tx:
                query = (
                    sa.select(invalidation_outbox.c.id, invalidation_outbox.c.data)
                    .order_by(invalidation_outbox.c.id)
                    .limit(self.batch)
                )
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                rows = conn.execute(query).all()
                if not rows:
                    return 0
                ids = [row.id for row in rows]
                deleted = conn.execute(
                    invalidation_outbox.delete().where(invalidation_outbox.c.id.in_(ids))
                ).rowcount
                if deleted != len(ids):  # another relay took some of them: let it finish
                    tx.rollback()
                    return 0
                datas = [row.data for row in rows]
                if isinstance(self.target, DatabaseLog) and self.target.engine is self.engine:
                    self.target.append_in(conn, datas)  # same transaction: exactly once
                else:
                    for data in datas:  # a crash before the commit below re-sends them
                        self.target.append(data)
                return len(rows)
        except sa.exc.SQLAlchemyError as exc:
            raise log_failure(exc, "outbox") from exc

    def pending(self) -> int:
        """Rows waiting in the outbox."""
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(invalidation_outbox)
            return conn.execute(query).scalar_one()


class RelayLoop(ReconnectingLoop):
    """Runs `relay` in a daemon thread: a pass every `interval` seconds while idle."""

    name = "cachework-outbox-relay"

    def __init__(self, relay: Relay, interval: float = 0.2) -> None:
        super().__init__()
        self.relay = relay
        self.interval = interval
        self.moved = 0
        self._failing = False

    def on_iteration(self) -> None:
        moved = self.relay.run_once()
        self.moved += moved
        if self._failing:
            log.info("outbox relay recovered")
            self._failing = False
        if moved == 0:
            self._stop.wait(self.interval)

    def on_connection_error(self, exc: BaseException, delay: float) -> float:
        if not self._failing:
            log.warning("outbox relay failed, retrying: %s", exc)
            self._failing = True
        return delay
