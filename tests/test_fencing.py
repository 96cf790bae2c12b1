"""Rebuild locks of issue 18: a paused holder never writes over a newer holder's items
(defect 2, fencing), and the database lock backend never trusts a worker's clock
(defect 3). On SQLite and PostgreSQL, with the Redis and the database lock backends."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from cachework.cache.items import store
from cachework.cache.items import sync as cache_sync
from cachework.cache.items.locks import (
    DatabaseLocks,
    RedisLocks,
    Renewer,
    claim_fence,
    hold_fence,
    scope_key,
)
from cachework.cache.items.sync import rebuild_scope
from cachework.errors import LockLostError

PROJECT = "p-1"
TTL_MS = 1000  # short, with room for a loaded machine (the renewer ticks every third)


@pytest.fixture
def prices(database):
    """A table of the test's own that the plugin sums: the data its items come from."""
    with database.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE fence_prices (project VARCHAR(40), price INTEGER)"))
        conn.execute(sa.text(f"INSERT INTO fence_prices VALUES ('{PROJECT}', 10)"))
    return database


def _set_price(database, price: int) -> None:
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE fence_prices SET price = :p"), {"p": price})


def _stored(database) -> dict | None:
    with database.session() as session:
        item = store.get_item(session, "fenced", "total", project=PROJECT)
    return None if item is None else item.data


def _locks(kind: str, database, request, ttl_ms: int = TTL_MS):
    if kind == "database":
        return DatabaseLocks(database.engine, ttl_ms=ttl_ms)
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    request.addfinalizer(client.close)
    return RedisLocks(client, ttl_ms=ttl_ms)


class PausingPlugin:
    """Sums the prices; in the thread named `paused` it then stops (as SIGSTOP would)
    until `resume` is set, before handing its item to the framework."""

    app_name = "fenced"
    item_names = ("total",)

    def __init__(self) -> None:
        self.read = threading.Event()
        self.resume = threading.Event()

    def update_cache(self, writer, session, project=None, name=None) -> None:
        total = session.execute(sa.text("SELECT SUM(price) FROM fence_prices")).scalar_one()
        if threading.current_thread().name == "paused":
            self.read.set()
            assert self.resume.wait(30), "never resumed"
        writer.set_item("total", {"sum": int(total)})


@pytest.mark.parametrize("kind", ["database", "redis"])
def test_a_paused_holder_never_writes_over_a_newer_rebuild(prices, kind, request, monkeypatch):
    """The holder reads the data, then is paused past its lock's TTL (its renewer paused
    with it: it does not tick before the write). The data changes, a second rebuild takes
    the lock and writes the new total. The first resumes: it must write nothing (its
    fencing token is no longer the newest), report a LockLostError and leave its names
    dirty, so a later rebuild runs; the new total stays. Before fencing it wrote the old
    total over the new one and reported `updated: 1`."""
    locks = _locks(kind, prices, request)
    plugin = PausingPlugin()

    class PausedRenewer(Renewer):  # the paused process's renewer is paused too
        def __init__(self, lock, ttl_ms):
            super().__init__(lock, ttl_ms)
            if threading.current_thread().name == "paused":
                self.interval = 3600

    monkeypatch.setattr(cache_sync, "Renewer", PausedRenewer)
    outcome: dict = {}

    def first() -> None:
        try:
            outcome["result"] = rebuild_scope(prices.session, locks, plugin, PROJECT)
        except Exception as exc:  # the outcome is what the test checks
            outcome["error"] = exc

    thread = threading.Thread(target=first, name="paused")
    thread.start()
    try:
        assert plugin.read.wait(10)
        _set_price(prices, 25)
        second = rebuild_scope(prices.session, locks, plugin, PROJECT)  # after the TTL
        assert second.updated == 1 and not second.deferred, second
        assert _stored(prices) == {"sum": 25}
    finally:
        plugin.resume.set()
        thread.join(30)
    assert _stored(prices) == {"sum": 25}, "the paused holder wrote its old items"
    assert isinstance(outcome.get("error"), LockLostError), outcome
    lock = locks.lock(scope_key(PROJECT, "fenced"))
    assert lock.is_dirty()  # the paused holder's request is not dropped
    again = rebuild_scope(prices.session, locks, plugin, PROJECT)
    assert again.updated == 1 and not lock.is_dirty()
    assert _stored(prices) == {"sum": 25}


def test_fencing_tokens_grow_per_scope_and_only_the_newest_writes(database):
    with database.session() as session:
        tokens = [claim_fence(session, "a:p") for _ in range(3)]
        other = claim_fence(session, "a:q")
    assert tokens == [1, 2, 3] and other == 1
    with database.session() as session:
        hold_fence(session, "a:p", 3)
    for stale in (1, 2, 4):
        with pytest.raises(LockLostError, match="a:p"), database.session() as session:
            hold_fence(session, "a:p", stale)


def test_a_refused_write_rolls_back_whole(database):
    """The fence is checked in the write's transaction: when it refuses, nothing of that
    transaction is kept (the items written before the check included)."""
    with database.session() as session:
        old = claim_fence(session, "fenced:p-1")
        claim_fence(session, "fenced:p-1")  # a later holder
    with pytest.raises(LockLostError), database.session() as session:
        store.set_item(session, "fenced", "total", {"sum": 1}, project=PROJECT)
        hold_fence(session, "fenced:p-1", old)
    assert _stored(database) is None


# --- defect 3: database locks use the database's clock -------------------------------------


def _clock_ahead(monkeypatch, seconds: float) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


def test_a_worker_clock_120_s_ahead_cannot_take_a_held_database_lock(database, monkeypatch):
    """One worker holds the scope's lock (TTL 10 s); another, whose clock runs 120 s
    ahead, must not take it, and must see the holder's real time left. Before, expiry was
    compared with each worker's own clock: the skewed one took the lock at once."""
    locks = DatabaseLocks(database.engine, ttl_ms=10_000)
    holder, skewed = locks.lock("app:p"), locks.lock("app:p")
    assert holder.acquire()
    _clock_ahead(monkeypatch, 120)
    assert not skewed.acquire()
    assert 0 < skewed.remaining_ms() <= 10_000
    monkeypatch.undo()
    holder.release()


def test_a_lock_taken_by_a_worker_clock_ahead_still_runs_out_on_time(database, monkeypatch):
    """A holder whose clock runs 120 s ahead takes and renews the lock; when it dies the
    lock runs out after its TTL by the database's clock, not 120 s later."""
    locks = DatabaseLocks(database.engine, ttl_ms=TTL_MS)
    skewed, other = locks.lock("app:p"), locks.lock("app:p")
    _clock_ahead(monkeypatch, 120)
    assert skewed.acquire() and skewed.renew()
    monkeypatch.undo()
    assert 0 < other.remaining_ms() <= TTL_MS
    deadline = time.monotonic() + 5
    while not other.acquire():
        assert time.monotonic() < deadline, "the skewed holder's lock never ran out"
        time.sleep(0.05)
    other.release()


def test_a_finished_holder_keeps_the_names_a_newer_holder_took(database, request):
    """A holder paused after its commit and before `finish()` must not forget the names
    the holder that took over has taken (with its own): should that one die, they would
    be lost."""
    backends = (DatabaseLocks(database.engine, ttl_ms=500), _locks("redis", database, request, 500))
    for locks in backends:
        old, new = locks.lock("app:f"), locks.lock("app:f")
        old.mark_dirty(["a"])
        assert old.acquire() and old.take_dirty() == {"a"}
        time.sleep(locks.ttl_ms / 1000 + 0.2)  # paused past its TTL
        new.mark_dirty(["b"])
        assert new.acquire() and new.take_dirty() == {"a", "b"}
        old.finish()  # resumed: not its names to forget any more
        new.release()  # ... and the new holder dies before its commit
        assert locks.lock("app:f").take_dirty() == {"a", "b"}
