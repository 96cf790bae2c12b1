"""The rebuild lock and dirty flag of one (project, app) cache scope.

Queue-time deduplication would drop a rebuild requested while one runs and leave the cache
stale. Instead each scope has a run lock plus a set of dirty item names: a request marks
the names dirty and then tries the lock; the holder takes the dirty names, rebuilds them,
and loops until none are left, checking once more after releasing. So no request is lost
and no two rebuilds of a scope run at once.

Two backends with one interface: Redis (`cachework.redis_lock`: redis-py's owner-token
lock, dirty names in a set) when a client is given, else small tables in the app database.
A `Renewer` thread keeps the lock alive while a long rebuild runs; if renewal ever fails
the lock is marked lost and the holder must not commit.

A holder killed mid-rebuild (SIGKILL, a lost node) must not lose what it took: taking the
dirty names moves them to a "taken" set that only `finish()` (after the commit) clears,
and the next holder takes the dirty and the taken names together. `remaining_ms()` lets a
request that found the lock held tell a live holder (it renews) from a dead one (its lock
runs out, and the request then takes it: see `cachework.cache.items.sync.rebuild_scope`).

A lock alone cannot stop a holder that was paused (SIGSTOP, a long GC or swap) past its
TTL: it wakes up believing it still holds the lock and writes items computed from old data
over those of the holder that took the lock after it. So each holder also claims a fencing
token (`claim_fence`: a per-scope counter in the app database, one more on every claim,
whatever the lock backend) right after it takes the lock, and its item write proves in the
same database transaction that no later holder has claimed one since (`hold_fence`);
otherwise it writes nothing (LockLostError) and the names go back to dirty.

The database backend never trusts a worker's clock: expiry is computed by the database
(PostgreSQL `clock_timestamp()`; SQLite `julianday('now')`, the clock of the one machine
all users of the file share), so a worker whose clock runs ahead cannot take a held lock.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cachework.errors import LockLostError
from cachework.redis_lock import TokenLock
from cachework.schema import cache_dirty, cache_fences, cache_locks, cache_taken

log = logging.getLogger(__name__)
ALL = "*"  # the dirty name that means "every item of the scope"
PREFIX = "cachework:cache"


def scope_key(project: str | None, app_name: str) -> str:
    """The lock key of one scope; '-' stands for the site-wide items."""
    return f"{app_name}:{project or '-'}"


class RebuildLock(Protocol):
    """One scope's run lock and dirty names."""

    key: str
    lost: bool

    def mark_dirty(self, names: list[str] | None) -> None: ...
    def take_dirty(self) -> set[str]:
        """The dirty names plus those a previous holder took and never finished."""
        ...

    def finish(self) -> None:
        """The taken names are written (or reported): forget them, unless another holder
        has taken the lock since (it took them over with its own: they are its now)."""
        ...

    def is_dirty(self) -> bool: ...
    def acquire(self) -> bool: ...
    def renew(self) -> bool: ...
    def release(self) -> None: ...
    def remaining_ms(self) -> int | None:
        """Milliseconds until the lock expires (None: nobody holds it)."""
        ...


class LockBackend(Protocol):
    ttl_ms: int

    def lock(self, key: str) -> RebuildLock: ...


def _names(names: list[str] | None) -> list[str]:
    return [ALL] if not names else list(dict.fromkeys(names))


# --- Redis ----------------------------------------------------------------------------------

# Forget the taken names unless another holder has the lock now (it took them over).
_FINISH = "local o = redis.call('get', KEYS[1]) if (not o) or o == ARGV[1] then return redis.call('del', KEYS[2]) else return 0 end"  # noqa: E501


class RedisLock:
    """The owner-token lock of `cachework.redis_lock` (`SET NX PX`; renewed and released
    only while still the owner), with the scope's dirty and taken names in two sets."""

    def __init__(self, client, key: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.lost = False
        self._lock_key = f"{PREFIX}:lock:{key}"
        self._dirty_key = f"{PREFIX}:dirty:{key}"
        self._taken_key = f"{PREFIX}:taken:{key}"
        self._lock = TokenLock(client, self._lock_key, ttl_ms)
        self.token = self._lock.token

    def mark_dirty(self, names: list[str] | None) -> None:
        self.client.sadd(self._dirty_key, *_names(names))

    def take_dirty(self) -> set[str]:
        pipe = self.client.pipeline(transaction=True)
        pipe.sunionstore(self._taken_key, [self._taken_key, self._dirty_key])
        pipe.delete(self._dirty_key)
        pipe.smembers(self._taken_key)
        _, _, members = pipe.execute()
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    def finish(self) -> None:
        self.client.eval(_FINISH, 2, self._lock_key, self._taken_key, self.token)

    def remaining_ms(self) -> int | None:
        left = int(self.client.pttl(self._lock_key))
        if left == -2:
            return None
        return left if left >= 0 else 2**62  # -1: no expiry (set by hand): held for ever

    def is_dirty(self) -> bool:
        return bool(self.client.exists(self._dirty_key))

    def acquire(self) -> bool:
        self.lost = False
        return self._lock.acquire()

    def renew(self) -> bool:
        return self._lock.renew()

    def release(self) -> None:
        self._lock.release()


class RedisLocks:
    def __init__(self, client, ttl_ms: int) -> None:
        self.client = client
        self.ttl_ms = ttl_ms

    def lock(self, key: str) -> RedisLock:
        return RedisLock(self.client, key, self.ttl_ms)


# --- database -------------------------------------------------------------------------------


def upsert_insert(bind: sa.Engine | sa.Connection, table: sa.Table):
    """INSERT into `table` in `bind`'s dialect, which has `on_conflict_do_*`."""
    return (postgresql if bind.dialect.name == "postgresql" else sqlite).insert(table)


def db_now_ms(dialect: str) -> sa.ColumnElement[int]:
    """The database's clock in epoch milliseconds, as a SQL expression (never a worker's).

    PostgreSQL: `clock_timestamp()` (the server's clock, moving within a transaction).
    SQLite: `julianday('now')`, the clock of the machine that holds the file, which every
    process using it shares."""
    if dialect == "postgresql":
        epoch = sa.extract("epoch", sa.func.clock_timestamp())
        return sa.cast(sa.func.floor(epoch * 1000), sa.BigInteger)
    return sa.cast((sa.func.julianday("now") - 2440587.5) * 86_400_000, sa.BigInteger)


class DatabaseLock:
    """A row per scope with owner and expiry; taken by a conditional UPDATE (atomic on
    PostgreSQL and SQLite) whose expiry comes from the database's clock. Each call is its
    own short transaction on `engine`, apart from the rebuild's session."""

    def __init__(self, engine: sa.Engine, key: str, ttl_ms: int) -> None:
        self.engine = engine
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self.lost = False
        self._now = db_now_ms(engine.dialect.name)

    def mark_dirty(self, names: list[str] | None) -> None:
        rows = [{"key": self.key, "name": n} for n in _names(names)]
        with self.engine.begin() as conn:
            conn.execute(
                upsert_insert(self.engine, cache_dirty).values(rows).on_conflict_do_nothing()
            )

    def take_dirty(self) -> set[str]:
        with self.engine.begin() as conn:
            dirty = conn.execute(
                sa.delete(cache_dirty)
                .where(cache_dirty.c.key == self.key)
                .returning(cache_dirty.c.name)
            ).scalars()
            rows = [{"key": self.key, "name": n} for n in dirty]
            if rows:
                conn.execute(
                    upsert_insert(self.engine, cache_taken).values(rows).on_conflict_do_nothing()
                )
            taken = conn.execute(sa.select(cache_taken.c.name).where(cache_taken.c.key == self.key))
            return set(taken.scalars())

    def finish(self) -> None:
        other_holder = sa.exists().where(
            cache_locks.c.key == self.key,
            cache_locks.c.owner.is_not(None),
            cache_locks.c.owner != self.token,
        )
        with self.engine.begin() as conn:
            conn.execute(sa.delete(cache_taken).where(cache_taken.c.key == self.key, ~other_holder))

    def remaining_ms(self) -> int | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(cache_locks.c.owner, (cache_locks.c.expires_ms - self._now)).where(
                    cache_locks.c.key == self.key
                )
            ).first()
        if row is None or row[0] is None or row[1] is None:
            return None
        return max(0, int(row[1]))

    def is_dirty(self) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(cache_dirty.c.name).where(cache_dirty.c.key == self.key).limit(1)
            ).first()
        return found is not None

    def acquire(self) -> bool:
        self.lost = False
        with self.engine.begin() as conn:
            conn.execute(
                upsert_insert(self.engine, cache_locks)
                .values(key=self.key, owner=None, expires_ms=None)
                .on_conflict_do_nothing()
            )
            taken = conn.execute(
                sa.update(cache_locks)
                .where(
                    cache_locks.c.key == self.key,
                    sa.or_(cache_locks.c.owner.is_(None), cache_locks.c.expires_ms < self._now),
                )
                .values(owner=self.token, expires_ms=self._now + self.ttl_ms)
            )
            return taken.rowcount == 1

    def renew(self) -> bool:
        with self.engine.begin() as conn:
            renewed = conn.execute(
                sa.update(cache_locks)
                .where(cache_locks.c.key == self.key, cache_locks.c.owner == self.token)
                .values(expires_ms=self._now + self.ttl_ms)
            )
            return renewed.rowcount == 1

    def release(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(cache_locks)
                .where(cache_locks.c.key == self.key, cache_locks.c.owner == self.token)
                .values(owner=None, expires_ms=None)
            )


class DatabaseLocks:
    def __init__(self, engine: sa.Engine, ttl_ms: int) -> None:
        self.engine = engine
        self.ttl_ms = ttl_ms

    def lock(self, key: str) -> DatabaseLock:
        return DatabaseLock(self.engine, key, self.ttl_ms)


def lock_backend(engine: sa.Engine, redis_client=None, ttl_ms: int = 60_000) -> LockBackend:
    """Redis locks when a client is given, database locks otherwise."""
    if redis_client is not None:
        return RedisLocks(redis_client, ttl_ms)
    return DatabaseLocks(engine, ttl_ms)


# --- fencing --------------------------------------------------------------------------------


def claim_fence(session: Session, key: str) -> int:
    """A new fencing token for the scope `key`, above every one claimed before.

    Call it right after taking the scope's lock and commit it before the plugin reads:
    from then on, only this holder's write can pass `hold_fence`."""
    stmt = upsert_insert(session.get_bind(), cache_fences).values(key=key, token=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[cache_fences.c.key], set_={"token": cache_fences.c.token + 1}
    ).returning(cache_fences.c.token)
    return int(session.execute(stmt).scalar_one())


def hold_fence(session: Session, key: str, token: int) -> None:
    """Prove in the caller's transaction that no holder has claimed the scope since
    `token`, and keep it so until that transaction ends (a write on the fence row: a later
    claim waits for the commit). Raises LockLostError (the caller rolls back) otherwise.

    Run it before the transaction's first other write: on SQLite it then takes the write
    lock at once."""
    held = session.execute(
        sa.update(cache_fences)
        .where(cache_fences.c.key == key, cache_fences.c.token == token)
        .values(token=token)
    )
    if held.rowcount != 1:
        raise LockLostError(
            f"the rebuild lock of {key} was taken over (fencing token {token} is no longer "
            "the newest) before commit; nothing written, left dirty for the current holder"
        )


# --- renewal --------------------------------------------------------------------------------


class Renewer:
    """Renews `lock` every third of its TTL while the `with` block runs; joined on exit.

    If a renewal fails (the lock expired and someone else may hold it) `lock.lost` is set,
    so the holder can refuse to commit."""

    def __init__(self, lock: RebuildLock, ttl_ms: int) -> None:
        self.lock = lock
        self.interval = max(ttl_ms / 3000.0, 0.02)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cache-lock-renewer:{lock.key}", daemon=True
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ok = self.lock.renew()
            except Exception:  # a connection error: we can no longer prove we own it
                log.exception("renewing cache lock %s failed", self.lock.key)
                ok = False
            if not ok:
                log.error("cache lock %s was lost during a rebuild", self.lock.key)
                self.lock.lost = True
                return

    def __enter__(self) -> Renewer:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
