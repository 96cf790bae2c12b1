"""The log (Redis Stream, SQLite and PostgreSQL tables), the tracker, the listener thread
and the outbox, against real services, with a fake cached-table registry."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachework.cache.invalidation import (
    DatabaseLog,
    Listener,
    LogError,
    LogUnavailable,
    ReconnectingLoop,
    RedisLog,
    Relay,
    Tracker,
    publish,
)
from cachework.cache.invalidation.events import id_key
from cachework.errors import ConfigError, NotFoundError, TransientError
from cachework.schema import invalidation_log, invalidation_outbox
from tests.invalidation_helpers import (
    FakeTarget,
    LoadedTarget,
    OwnRedis,
    free_port,
    kill_relay_after_append,
    wait_until,
)


@pytest.fixture(params=["redis", "sqlite", "postgresql"])
def log(request):
    """A fresh, empty log on each backend."""
    if request.param == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        yield RedisLog(client, key=f"test:inv:{uuid.uuid4().hex[:8]}", maxlen=1000)
        client.close()
        return
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    from tests.conftest import _database

    gen = _database(url)
    database = next(gen)
    yield DatabaseLog(database.engine, maxlen=1000, poll_interval=0.01)
    gen.close()


def _event(key: int) -> str:
    return publish_json("categories", [key])


def publish_json(table: str, keys: list | None) -> str:
    from cachework.cache.invalidation.events import validate_event

    return validate_event(table, keys).to_json()


# --- the log contract -------------------------------------------------------------------


def test_log_ids_grow_and_reads_follow_a_cursor(log):
    assert log.state().head == "0"
    ids = [log.append(_event(k)) for k in range(1, 13)]
    assert [id_key(i) for i in ids] == sorted(id_key(i) for i in ids)
    assert len(set(ids)) == 12
    state = log.state()
    assert state.head == ids[-1] and state.epoch
    assert log.state().epoch == state.epoch
    batch = log.read("0", count=5)
    assert [i for i, _ in batch.entries] == ids[:5] and not batch.gap
    batch = log.read(ids[4], count=100)
    assert [i for i, _ in batch.entries] == ids[5:] and not batch.gap
    assert log.read(ids[-1]).entries == []
    started = time.monotonic()
    log.wait(ids[-1], 0.05, threading.Event())
    assert time.monotonic() - started < 2


def test_trimmed_cursor_is_a_gap(log):
    ids = [log.append(_event(k)) for k in range(1, 11)]
    log.trim(3)
    batch = log.read(ids[2])
    assert batch.gap
    assert not log.read(ids[-2]).gap


# --- the tracker ------------------------------------------------------------------------


def test_tracker_applies_events_after_its_cursor_and_never_skips_what_it_cannot_use(log):
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log)
    old = log.append(_event(99))
    assert tracker.sync() == 0  # a fresh process starts at the head: nothing to replay
    assert target.cursor == old and target.dropped == []
    log.append(_event(1))
    log.append(publish_json("products", [5]))  # not cached here: ignored
    log.append("{broken")  # malformed, no table to read: every cached table dropped
    log.append(publish_json("categories", ["x", "2"]))  # 'x' is no key: the whole table
    last = log.append(publish_json("categories", None))
    assert tracker.sync() == 3
    assert target.invalidated == [("categories", [1]), ("categories", None), ("categories", None)]
    assert target.cursor == last
    assert len(target.dropped) == 1 and "names no readable table" in target.dropped[0]
    stats = target.listener
    assert (stats["applied"], stats["ignored"], stats["malformed"]) == (3, 1, 1)
    assert tracker.sync() == 0  # up to date: one state() call, nothing read


def test_the_publish_time_of_each_applied_event_is_known_where_the_log_keeps_it(log):
    """For the lag metric: a Redis Stream id is its own time; the database log on
    PostgreSQL reads each row's `created_at` with it; SQLite's timestamps have whole
    seconds, so its events give none."""
    from cachework.worker.metrics import publish_time

    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log)
    tracker.sync()
    before = time.time()
    ids = [log.append(_event(k)) for k in (1, 2)]
    after = time.time()
    assert tracker.sync() == 2
    recent = list(tracker.recent)
    assert [event_id for event_id, _applied, _published in recent] == ids
    for event_id, applied, published in recent:
        known = published if published is not None else publish_time(event_id)
        if isinstance(log, DatabaseLog) and log.engine.dialect.name == "sqlite":
            assert known is None
            continue
        assert known is not None and before - 1 <= known <= after + 1, (known, before, after)
        assert applied >= known - 1


def test_tracker_drops_tables_on_a_gap_and_carries_on(log):
    target = FakeTarget()
    tracker = Tracker(target, log)
    log.append(_event(1))
    tracker.sync()
    for k in range(2, 12):
        log.append(_event(k))
    log.trim(2)
    tracker.sync()
    assert len(target.dropped) == 1 and "gap" in target.dropped[0]
    assert target.listener["gaps"] == 1
    assert target.cursor == log.state().head
    log.append(_event(50))
    tracker.sync()
    assert target.invalidated[-1] == ("categories", [50])


def test_a_log_emptied_or_reset_behind_the_cursor_drops_tables(log):
    target = FakeTarget()
    tracker = Tracker(target, log)
    tracker.sync()
    ids = [log.append(_event(k)) for k in range(1, 6)]
    tracker.sync()
    assert target.cursor == ids[-1] and target.dropped == []
    log.trim(0)  # every entry gone: the head is now behind the cursor
    assert tracker.sync() == 0
    last = log.append(_event(8))
    tracker.sync()
    # One drop: at once (the table log), or when the next entry shows that the stream's
    # entries after the cursor are no longer all there (Redis: the cursor was the last id
    # handed out, so nothing was lost until then).
    assert len(target.dropped) == 1 and "gap" in target.dropped[0]
    assert target.cursor == last
    log.append(_event(9))
    tracker.sync()
    assert target.invalidated[-1] == ("categories", [9]) and len(target.dropped) == 1


def test_records_loaded_before_the_first_sync_are_dropped(log):
    fresh, loaded = FakeTarget(), LoadedTarget()
    log.append(_event(1))
    Tracker(fresh, log).sync()
    assert fresh.dropped == []  # nothing could be cached yet: no drop
    Tracker(loaded, log).sync()
    assert len(loaded.dropped) == 1 and "before this process" in loaded.dropped[0]


class Down:
    """A log that cannot be reached until `up` is set."""

    def __init__(self, inner):
        self.inner = inner
        self.up = False

    def __getattr__(self, name):
        if not self.up:
            raise LogUnavailable("down")
        return getattr(self.inner, name)


def test_a_drop_before_the_first_sync_makes_the_first_sync_drop_again(log):
    target = FakeTarget()
    down = Down(log)
    tracker = Tracker(target, down)
    assert tracker.catch_up() == 0  # unreachable at task start: drop, then read fresh
    assert len(target.dropped) == 1 and "unreachable" in target.dropped[0]
    log.append(_event(1))  # published while this process held freshly loaded records
    down.up = True
    tracker.sync()
    assert len(target.dropped) == 2 and target.cursor == log.state().head


def test_wait_for_is_a_read_barrier(log):
    target = FakeTarget()
    tracker = Tracker(target, log)
    tracker.sync()
    event_id = log.append(_event(7))
    tracker.wait_for(event_id, timeout=2)
    assert target.invalidated == [("categories", [7])]
    with pytest.raises(TransientError, match="event_id="):
        tracker.wait_for("99999999999999-0" if "-" in event_id else "9" * 19, timeout=0.1)


def test_new_epoch_after_redis_lost_its_data_drops_tables(redis_url):
    client = redis.Redis.from_url(redis_url)
    log = RedisLog(client, key="test:epoch")
    target = FakeTarget()
    tracker = Tracker(target, log)
    log.append(_event(1))
    tracker.sync()
    client.flushdb()  # what a restart without persistence looks like
    log.append(_event(2))
    tracker.sync()
    assert len(target.dropped) == 1 and "replaced" in target.dropped[0]
    assert target.cursor == log.state().head and target.invalidated == []
    client.close()


def test_redis_restart_that_lost_the_newest_entries_drops_tables(tmp_path):
    server = OwnRedis(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
    log = RedisLog(client)
    target = FakeTarget()
    tracker = Tracker(target, log)
    try:
        tracker.sync()
        seen = log.append(_event(1))
        tracker.sync()
        assert target.cursor == seen
        client.save()  # persisted: the epoch key and the entry this process has seen
        log.append(_event(2))  # never persisted, never read by this process
        server.restart()  # kill -9, then start again from the snapshot
        assert log.state().head == seen  # the stream is back to what was saved
        tracker.sync()
        assert len(target.dropped) == 1 and "replaced" in target.dropped[0]
        assert target.invalidated == [("categories", [1])]
    finally:
        client.close()
        server.stop()


# --- publish ------------------------------------------------------------------------------


def test_publish_validates_before_writing(log):
    with pytest.raises(NotFoundError, match=r"'nope'.*categories"):
        publish("nope", [1], log=log, known_tables=["categories"])
    with pytest.raises(ConfigError, match="log="):
        publish("categories", [1])
    assert log.state().head == "0"
    event_id = publish("categories", ["3"], log=log, known_tables={"categories": int})
    assert log.read("0").entries[0][0] == event_id


# --- the listener thread ------------------------------------------------------------------


def test_a_log_that_refuses_is_an_error_one_that_cannot_be_reached_is_transient(log):
    """One classifier (`cachework.errors.is_transient`): a log whose table or key is wrong is
    not retried; an unreachable one is. A listener treats both as a log it cannot read."""
    log.append(_event(1))
    if isinstance(log, RedisLog):
        log.client.delete(log.key)
        log.client.set(log.key, "not a stream")  # WRONGTYPE on every stream command
        down = RedisLog(redis.Redis(port=free_port(), socket_connect_timeout=1), key="k")
    else:
        with log.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {invalidation_log.name}"))
        down = DatabaseLog(sa.create_engine(f"postgresql+psycopg://127.0.0.1:{free_port()}/none"))
    with pytest.raises(LogError) as refused:
        log.read("0")
    assert not isinstance(refused.value, TransientError)
    with pytest.raises(LogUnavailable, match="unreachable"):
        down.state()
    target = FakeTarget(names=("categories",))
    assert Tracker(target, log).catch_up() == 0 and len(target.dropped) == 1


def test_listener_thread_applies_events_and_stops_cleanly(log):
    target = FakeTarget()
    tracker = Tracker(target, log)
    listener = Listener(tracker, log, block=0.05).start()
    try:
        wait_until(lambda: target.listener.get("connected"))
        event_id = publish("categories", [1, 2], log=log)
        tracker.wait_for(event_id, timeout=5)
        wait_until(lambda: target.keys_seen() == [1, 2])
    finally:
        assert listener.stop(timeout=5)
    assert not listener.alive and target.dropped == []


def test_listener_survives_fuzzed_entries_and_keeps_applying(redis_url):
    client = redis.Redis.from_url(redis_url)
    log = RedisLog(client, key="test:fuzz")
    target = FakeTarget()
    listener = Listener(Tracker(target, log), log, block=0.05).start()
    expected: list[int] = []
    counter = iter(range(1, 10**6))
    try:
        wait_until(lambda: target.listener.get("connected"))

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(
            st.lists(
                st.dictionaries(
                    st.sampled_from([b"e", b"x", "e", "\u00e9"]),
                    st.one_of(st.binary(max_size=60), st.text(max_size=60), st.integers()),
                    min_size=1,
                    max_size=3,
                ),
                min_size=1,
                max_size=4,
            )
        )
        def feed(garbage):
            for fields in garbage:
                client.xadd(log.key, fields)
                key = next(counter)
                expected.append(key)
                publish("categories", [key], log=log)

        feed()
        wait_until(lambda: target.keys_seen() == expected, timeout=20)
        assert listener.alive
        assert target.listener["malformed"] >= 1
        assert target.dropped  # junk may name any table: never skipped silently
    finally:
        listener.stop()
        client.close()


def test_listener_drops_tables_when_its_cursor_is_trimmed_while_it_lags(redis_url):
    client = redis.Redis.from_url(redis_url)
    log = RedisLog(client, key="test:lag")
    target = FakeTarget()
    target.gate = threading.Event()
    listener = Listener(Tracker(target, log, batch=1), log, block=0.05).start()
    try:
        wait_until(lambda: target.listener.get("connected"))
        publish("categories", [1], log=log)  # the listener blocks applying this one
        for key in range(2, 30):
            publish("categories", [key], log=log)
        log.trim(3)
        target.gate.set()
        wait_until(lambda: target.dropped)
        assert "gap" in target.dropped[0] and target.listener["gaps"] == 1
        last = publish("categories", [100], log=log)
        wait_until(lambda: target.cursor == last)
        assert target.keys_seen()[-1] == 100 and listener.alive
    finally:
        listener.stop()
        client.close()


def test_listener_reconnects_after_redis_restart_and_drops_when_unreachable(tmp_path):
    server = OwnRedis(tmp_path / "redis").start()
    log = RedisLog.for_listener(server.url)
    publisher = RedisLog(redis.Redis.from_url(server.url, socket_connect_timeout=0.5))
    target = FakeTarget()
    listener = Listener(Tracker(target, log), log, stale_after=0.5, block=0.05).start()
    try:
        wait_until(lambda: target.listener.get("connected"))
        publish("categories", [1], log=publisher)
        wait_until(lambda: target.keys_seen() == [1])
        server.stop()
        wait_until(lambda: target.listener["connected"] is False, timeout=5)
        wait_until(lambda: any("unreachable" in r for r in target.dropped), timeout=5)
        server.start()
        wait_until(lambda: target.listener["connected"], timeout=10)
        assert target.listener["reconnects"] >= 1
        assert any("replaced" in r for r in target.dropped)  # new epoch: events may be lost
        event_id = publish("categories", [2], log=publisher)
        wait_until(lambda: target.cursor == event_id, timeout=5)
        assert target.keys_seen()[-1] == 2
    finally:
        listener.stop()
        publisher.close()
        server.stop()


def test_listener_that_keeps_failing_unexpectedly_drops_its_tables(log):
    class Garbled:
        """A log whose reads answer something the listener cannot use."""

        def __getattr__(self, name):
            return getattr(log, name)

        def read(self, after, count=500):
            raise ValueError("odd answer")

        def follow(self, after, count, timeout):  # the blocking read, where the log has one
            raise ValueError("odd answer")

    target = FakeTarget()
    listener = Listener(Tracker(target, log), Garbled(), stale_after=0.3, block=0.05)
    listener.backoff_start = 0.01
    listener.start()
    try:
        log.append(_event(1))
        wait_until(lambda: target.dropped, timeout=5)
        assert "unreachable" in target.dropped[0] and listener.alive
        assert target.listener["connected"] is False
    finally:
        assert listener.stop(timeout=5)


def test_reconnecting_loop_backs_off_and_survives_unexpected_errors():
    class Flaky(ReconnectingLoop):
        backoff_start = 0.01

        def __init__(self):
            super().__init__()
            self.connects = 0
            self.iterations = 0
            self.errors: list[str] = []

        def on_connect(self):
            self.connects += 1
            if self.connects <= 2:
                raise LogUnavailable("down")
            if self.connects == 3:
                raise RuntimeError("bug in a hook")

        def on_iteration(self):
            self.iterations += 1
            time.sleep(0.001)

        def on_connection_error(self, exc, delay):
            self.errors.append(str(exc))
            return delay

        def on_unexpected_error(self, exc):
            self.errors.append(f"unexpected {exc}")

    loop = Flaky().start()
    wait_until(lambda: loop.iterations > 5)
    assert loop.stop(timeout=5)
    assert loop.errors == ["down", "down", "unexpected bug in a hook"]
    assert loop.connects == 4


# --- the outbox ---------------------------------------------------------------------------


class CrashAfterAppend:
    """A log that stores the event, then 'dies' before the relay can delete the row."""

    def __init__(self, inner):
        self.inner = inner

    def append(self, data):
        self.inner.append(data)
        raise LogUnavailable("relay killed")


@pytest.mark.parametrize("backend", ["redis", "same-database"])
def test_outbox_is_transactional_and_relayed_at_least_once(backend, database, redis_url):
    if backend == "redis":
        target_log = RedisLog(redis.Redis.from_url(redis_url), key="test:outbox")
    else:
        target_log = DatabaseLog(database.engine)
    with pytest.raises(RuntimeError), database.session() as session:
        publish("categories", [1], session=session)
        raise RuntimeError("the caller's change failed")
    relay = Relay(database.engine, target_log)
    assert relay.pending() == 0 and relay.run_once() == 0
    with database.session() as session:
        assert publish("categories", [2], session=session) is None
        assert relay.pending() == 0  # not visible to the relay before the commit
    assert relay.pending() == 1
    if backend == "redis":
        with pytest.raises(LogUnavailable):
            Relay(database.engine, CrashAfterAppend(target_log)).run_once()
        assert relay.pending() == 1  # the row survived the crash
    assert relay.run_once() == 1
    assert relay.pending() == 0
    entries = [raw for _id, raw in target_log.read("0").entries]
    expected = publish_json("categories", [2])
    if backend == "redis":
        assert entries == [expected.encode()] * 2  # at least once: the crashed copy too
    else:
        assert entries == [expected]  # the same transaction: exactly once


def test_outbox_relays_eagerly_after_commit_when_given_a_log(database):
    target_log = DatabaseLog(database.engine)
    with database.session() as session:
        publish("categories", [3], session=session, log=target_log)
    assert target_log.state().head != "0"
    count = sa.select(sa.func.count())
    with database.engine.connect() as conn:
        assert conn.execute(count.select_from(invalidation_outbox)).scalar() == 0
        assert conn.execute(count.select_from(invalidation_log)).scalar() == 1


@pytest.mark.parametrize("backend", ["redis", "same-database"])
def test_outbox_row_survives_a_relay_killed_mid_relay(backend, database, redis_url):
    key = f"test:kill:{uuid.uuid4().hex[:8]}"
    if backend == "redis":
        client = redis.Redis.from_url(redis_url)
        target_log, where = RedisLog(client, key=key), redis_url
    else:
        client, target_log, where = None, DatabaseLog(database.engine), "same-database"
    try:
        with database.session() as session:
            publish("categories", [5], session=session)
        relay = Relay(database.engine, target_log)
        assert relay.pending() == 1
        kill_relay_after_append(database.url, where, key)
        assert relay.pending() == 1  # the killed relay's delete never committed
        wait_until(lambda: relay.run_once() == 1, timeout=15, every=0.1)  # the restart
        assert relay.pending() == 0
        entries = [raw for _id, raw in target_log.read("0").entries]
        expected = publish_json("categories", [5])
        if backend == "redis":
            assert entries == [expected.encode()] * 2  # at least once: the killed copy too
        else:
            assert entries == [expected]  # the append died with the transaction
    finally:
        if client is not None:
            client.close()
