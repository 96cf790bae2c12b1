"""An event with a key twice (issue 18, item 8): `{"table":"categories",...,"table":"zzz"}`
was applied as table zzz (json keeps the last duplicate) and categories stayed stale. Such
an entry is undecodable: the listener invalidates whole the one table it surely names, or
drops every cached table where the table itself is named twice."""

from __future__ import annotations

import uuid

import pytest
import redis

from cachework.cache.invalidation import DatabaseLog, Listener, RedisLog, Tracker, publish
from cachework.cache.invalidation.events import decode_event, table_of
from cachework.errors import ValidationError
from tests.invalidation_helpers import FakeTarget, wait_until

TWO_TABLES = '{"v":1,"table":"categories","keys":[1],"table":"zzz"}'
TWO_TABLES_ESCAPED = '{"v":1,"table":"categories","keys":[1],"t\\u0061ble":"zzz"}'
TWO_KEYS = '{"v":1,"table":"categories","keys":[1],"keys":[2]}'
TWO_VERSIONS = '{"v":2,"table":"categories","keys":[1],"v":1}'
NESTED = '{"v":1,"table":"categories","keys":[1],"names":[{"a":1,"a":2}]}'


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (TWO_TABLES, "table"),
        (TWO_TABLES_ESCAPED, "table"),
        (TWO_KEYS, "keys"),
        (TWO_VERSIONS, "v"),
        (NESTED, "a"),
    ],
)
def test_decode_refuses_a_key_given_twice_naming_it(raw, key):
    with pytest.raises(ValidationError, match=f"has the key '{key}' twice"):
        decode_event(raw)
    with pytest.raises(ValidationError, match="twice"):
        decode_event(raw.encode())


@pytest.mark.parametrize(
    ("raw", "table"),
    [
        (TWO_TABLES, None),  # either table may be meant: every cached table
        (TWO_TABLES_ESCAPED, None),
        ('{"v":1,"table":"categories","table":"categories"}', None),
        (TWO_KEYS, "categories"),  # the table is sure, its keys are not: the table whole
        (TWO_VERSIONS, "categories"),
        (NESTED, "categories"),
        # oversize (not parsed): the table key once at its start, or else any table
        ('{"v":1,"table":"categories","keys":[' + '"x",' * 2_200_000 + '"y"]}', "categories"),
        ('{"v":1,"table":"categories","keys":[' + '"x",' * 2_200_000 + '"y"],"table":"z"}', None),
        ('{"v":1,"table":"categories","keys":[' + '"x",' * 2_200_000 + '"\\u0079"]}', None),
    ],
    ids=["tables", "escaped", "same-twice", "keys", "v", "nested", "big", "big-tables", "big-esc"],
)
def test_table_of_an_entry_with_a_key_twice(raw, table):
    assert table_of(raw) == table


def test_a_valid_event_still_decodes():
    event = decode_event('{"v":1,"table":"categories","keys":[1,2],"names":["a","b"]}')
    assert (event.table, event.keys, event.names) == ("categories", (1, 2), ("a", "b"))


@pytest.fixture(params=["stream", "sqlite", "postgresql"])
def log(request):
    """The Redis stream and the database log table (both databases), empty."""
    if request.param == "stream":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        yield RedisLog(client, key=f"test:dup:{uuid.uuid4().hex[:8]}", maxlen=1000)
        client.close()
        return
    from tests.conftest import _database

    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    gen = _database(url)
    database = next(gen)
    yield DatabaseLog(database.engine, maxlen=1000, poll_interval=0.01)
    gen.close()


@pytest.mark.parametrize(
    ("raw", "invalidated", "drops"),
    [
        (TWO_TABLES, [], 1),
        (TWO_TABLES_ESCAPED, [], 1),
        (TWO_KEYS, [("categories", None)], 0),
    ],
    ids=["tables", "escaped", "keys"],
)
def test_a_running_listener_never_applies_an_entry_with_a_key_twice_as_its_last(
    log, raw, invalidated, drops
):
    target = FakeTarget(names=("categories", "zzz"))
    tracker = Tracker(target, log)
    listener = Listener(tracker, log, block=0.01).start()
    try:
        wait_until(lambda: target.listener["connected"], timeout=5)
        entry = log.append(raw)
        wait_until(lambda: tracker.cursor == entry, timeout=5)
        assert target.invalidated == invalidated
        assert len(target.dropped) == drops
        assert target.listener["malformed"] == 1
        after = publish("categories", [3], log=log)  # and it carries on
        wait_until(lambda: tracker.cursor == after, timeout=5)
        assert target.invalidated[-1] == ("categories", [3])
    finally:
        assert listener.stop()
