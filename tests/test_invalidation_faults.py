"""Regression tests of issue 12 for the invalidation log (defects 4 and 5, and the junk
flood of 6): an entry that cannot be applied exactly invalidates its table whole or drops
every cached table, never a silent stale read; the database log's ids come from its own
sequence only; a reader notices a log recreated under it or trimmed before its first read."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa

from cachework.cache.invalidation import DatabaseLog, RedisLog, Tracker, publish
from cachework.schema import invalidation_log
from tests.invalidation_helpers import FakeTarget

V = '{"v":1,"table":"categories"'


def _engine(kind: str, request) -> sa.Engine:
    """A fresh SQLite or PostgreSQL database with cachework's own tables."""
    from cachework.schema import own_metadata

    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "pg_url")
    engine = sa.create_engine(url)
    own_metadata().create_all(engine)
    request.addfinalizer(engine.dispose)
    return engine


def _log(kind: str, request) -> DatabaseLog | RedisLog:
    if kind != "redis":
        return DatabaseLog(_engine(kind, request))
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    request.addfinalizer(client.close)
    return RedisLog(client, key="cachework:test:faults")


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def log(request) -> DatabaseLog | RedisLog:
    return _log(request.param, request)


@pytest.mark.parametrize(
    "raw",
    [
        V + ',"keys":[' + ",".join(str(i) for i in range(20)) + "]}",  # over this reader's 10
        V + ',"keys":["' + "k" * 256 + '"]}',  # a key over 255 characters
        V + ',"keys":[1],"extra":true}',  # an unknown field
        V + ',"keys":[1.5]}',  # a float key
        V + ',"keys":[true]}',  # a boolean key
        '{"v":2,"table":"categories","keys":[1]}',  # a newer format
        V + ',"keys":["not-an-int"]}',  # no key of this table
        V + ',"keys":[' + '"x",' * 2_200_000 + '"y"]}',  # oversize: table read from its start
    ],
    ids=["many-keys", "long-key", "unknown-field", "float", "bool", "v2", "bad-key", "oversize"],
)
def test_an_entry_that_cannot_be_applied_exactly_invalidates_its_table_whole(log, raw):
    """Defect 4: each of these was "skipping malformed invalidation" while the cached
    records stayed. Now the table they name is invalidated whole."""
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log, max_keys=10)
    tracker.sync()
    log.append(raw)
    tracker.sync()
    assert target.invalidated == [("categories", None)]
    assert target.dropped == []


@pytest.mark.parametrize("raw", ["{broken", "[1,2]", '"text"', "\u00e9" * 10, '{"keys":[1]}'])
def test_an_entry_naming_no_readable_table_drops_every_cached_table(log, raw):
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log)
    tracker.sync()
    log.append(raw)
    tracker.sync()
    assert len(target.dropped) == 1


def test_an_entry_for_another_table_is_ignored_even_if_malformed(log):
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log)
    tracker.sync()
    log.append('{"v":1,"table":"products","keys":[1.5]}')
    tracker.sync()
    assert target.invalidated == [] and target.dropped == []


def test_publishing_and_receiving_limits_agree(log):
    """An event the publisher accepted with a larger `max_keys` than the reader's is
    applied (whole table), never skipped."""
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log, max_keys=5)
    tracker.sync()
    publish("categories", list(range(50)), log=log, max_keys=100)
    publish("categories", [1, 2], log=log, max_keys=100)
    tracker.sync()
    assert target.invalidated == [("categories", None), ("categories", [1, 2])]


def test_a_flood_of_junk_logs_a_bounded_number_of_warnings(log, caplog):
    """Defect 6: 2,000 junk entries logged 2 warnings each; now a few lines."""
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log)
    tracker.sync()
    for _ in range(2000):
        log.append("junk")
    with caplog.at_level(logging.WARNING):
        tracker.sync()
    assert target.listener["malformed"] == 2000
    assert target.dropped  # junk may name any table
    assert len(caplog.records) <= 12, len(caplog.records)


# --- defect 5: the database log ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("explicit", [10**12, 0, -1])
def test_the_database_log_refuses_ids_that_are_not_its_own(kind, explicit, request):
    """Defect 5: one row with a high explicit id put every reader's cursor past all later
    events, for ever. Ids come from the log's own sequence only."""
    engine = _engine(kind, request)
    log = DatabaseLog(engine)
    first = log.append(json.dumps({"v": 1, "table": "categories"}))
    with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
        conn.execute(invalidation_log.insert().values(id=explicit, data="{}"))
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log)
    tracker.sync()
    assert target.cursor == first
    publish("categories", [7], log=log)
    tracker.sync()
    assert target.invalidated == [("categories", [7])]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_log_recreated_under_a_reader_is_noticed(kind, request):
    """Defect 5: the log table dropped and made again (ids restart) while a reader
    follows it: the reader drops its tables instead of missing the new events."""
    engine = _engine(kind, request)
    log = DatabaseLog(engine)
    for key in range(5):
        publish("categories", [key], log=log)
    target = FakeTarget(names=("categories",))
    tracker = Tracker(target, log)
    tracker.sync()
    with engine.begin() as conn:
        invalidation_log.drop(conn)
        invalidation_log.create(conn)
    for key in range(8):  # past the reader's old cursor
        publish("categories", [100 + key], log=log)
    tracker.sync()
    assert target.dropped, "a recreated log went unnoticed"


def test_a_redis_reader_at_the_start_notices_a_trim_before_its_first_read(redis_url):
    """Defect 5 (the Redis case): a reader that adopted an empty stream (cursor "0")
    must notice entries trimmed before it read them."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        log = RedisLog(client, key="cachework:test:trim0", maxlen=10)
        target = FakeTarget(names=("categories",))
        tracker = Tracker(target, log)
        tracker.sync()
        assert target.cursor == "0"
        for key in range(30):
            publish("categories", [key], log=log)
        log.trim(5)
        tracker.sync()
        assert target.dropped, "entries trimmed before the first read went unnoticed"
        # ... and it follows normally afterwards, with no further drop
        dropped = len(target.dropped)
        publish("categories", [99], log=log)
        tracker.sync()
        assert target.invalidated[-1] == ("categories", [99])
        assert len(target.dropped) == dropped
    finally:
        client.delete("cachework:test:trim0", "cachework:test:trim0:epoch")
        client.close()


def test_an_emptied_stream_is_not_a_gap_for_ever(redis_url):
    """A stream trimmed to nothing: the reader adopts it without a drop on every read,
    and follows it after new entries (at most one cautious drop when they come)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        log = RedisLog(client, key="cachework:test:empty", maxlen=10)
        for key in range(5):
            publish("categories", [key], log=log)
        log.trim(0)
        target = FakeTarget(names=("categories",))
        tracker = Tracker(target, log)
        for _ in range(3):
            tracker.sync()
        assert target.dropped == []
        publish("categories", [42], log=log)
        tracker.sync()
        assert len(target.dropped) <= 1
        publish("categories", [43], log=log)
        tracker.sync()
        assert target.invalidated[-1] == ("categories", [43]) and len(target.dropped) <= 1
    finally:
        client.delete("cachework:test:empty", "cachework:test:empty:epoch")
        client.close()
