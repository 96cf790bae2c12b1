"""The invalidation event: strict validation, JSON round trip, id ordering (pure)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachework.cache.invalidation.events import (
    Event,
    decode_event,
    id_key,
    is_after,
    validate_event,
)
from cachework.errors import NotFoundError, ValidationError
from cachework.records import coerce


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"table": None}, ValidationError, "table=None"),
        ({"table": ""}, ValidationError, "table=''"),
        ({"table": 5}, ValidationError, "table=5"),
        ({"table": "t", "keys": "abc"}, ValidationError, "keys='abc'"),
        ({"table": "t", "keys": []}, ValidationError, "keys=[]"),
        ({"table": "t", "keys": [1, True]}, ValidationError, "keys[1]=True"),
        ({"table": "t", "keys": [1.5]}, ValidationError, "keys[0]=1.5"),
        ({"table": "t", "keys": [{"a": 1}]}, ValidationError, "keys[0]="),
        ({"table": "t", "keys": list(range(4))}, ValidationError, "at most 3"),
        ({"table": "t", "project": 7}, ValidationError, "project=7"),
        ({"table": "t", "app_name": ""}, ValidationError, "app_name=''"),
        ({"table": "t", "names": "summary"}, ValidationError, "names='summary'"),
        ({"table": "t", "names": ["ok", 3]}, ValidationError, "names[1]=3"),
        ({"table": "nope"}, NotFoundError, "known tables: categories, products"),
        ({"table": "categories", "keys": ["x"]}, ValidationError, "keys[0]: 'x'"),
    ],
)
def test_bad_events_name_the_field(kwargs, error, names):
    def coerce(key):
        if not str(key).isdigit():
            raise ValidationError(f"{key!r} is not an integer")
        return int(key)

    known = {"categories": coerce, "products": None, "t": None}
    if kwargs["table"] == "nope":
        known = {"categories": coerce, "products": None}
    with pytest.raises(error) as info:
        validate_event(**kwargs, known_tables=known, max_keys=3)
    assert names in str(info.value)


def test_valid_event_is_normalised_and_round_trips():
    event = validate_event(
        "categories",
        ["3", 3, "4"],
        project="p",
        app_name="inventory",
        names=["summary", "summary"],
        known_tables={"categories": int},
    )
    assert event == Event("categories", (3, 4), "p", "inventory", ("summary",))
    assert decode_event(event.to_json()) == event
    assert decode_event(event.to_json().encode()) == event
    whole = validate_event("categories", known_tables=["categories"])
    assert whole.keys is None and decode_event(whole.to_json()) == whole


@pytest.mark.parametrize(
    "key",
    [
        7,
        "sku-1",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("12.50"),
        dt.date(2026, 11, 27),
        dt.datetime(2026, 11, 27, 16, 5, 1, 250000),
        dt.time(9, 30),
    ],
    ids=type,
)
def test_every_key_type_a_table_takes_reaches_that_table_as_the_same_key(key):
    """One key coercion: an event carries any key a cached table's coercer accepts, and
    the receiving table's coercer turns its JSON form back into the same key."""
    event = validate_event("t", [key])
    received = decode_event(event.to_json())
    assert coerce(received.keys[0], type(key), "key") == key


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        "not json",
        "[1, 2]",
        '{"table": "t"}',
        '{"v": 1}',
        '{"v": 1, "table": "t", "extra": 1}',
        '{"v": 1, "table": "t", "keys": {}}',
        {"a": 1},
        "[" * 5000,
    ],
)
def test_malformed_entries_are_validation_errors(raw):
    with pytest.raises(ValidationError):
        decode_event(raw)


def test_event_ids_compare_as_numbers_not_strings():
    assert is_after("10", "9")
    assert is_after("1700000000000-10", "1700000000000-9")
    assert is_after("1700000000001-0", "1700000000000-99")
    assert not is_after("0", "0")
    assert id_key("0") == (0, 0) and id_key(b"5-1") == (5, 1) and id_key(7) == (7, 0)
    for bad in ("", "abc", "1-2-3", "-1", None, 1.5, True):
        with pytest.raises(ValidationError, match="event_id="):
            id_key(bad)


# Any text but NUL, which events refuse (PostgreSQL cannot store it in text columns).
no_nul = st.characters(exclude_characters="\x00")
keys = st.one_of(st.integers(-(2**40), 2**40), st.text(no_nul, min_size=1, max_size=20))
texts = st.text(no_nul, min_size=1, max_size=30).filter(str.strip)


@settings(max_examples=200, deadline=None)
@given(
    table=texts,
    keys=st.none() | st.lists(keys, min_size=1, max_size=20),
    project=st.none() | texts,
    app_name=st.none() | texts,
    names=st.none() | st.lists(texts, min_size=1, max_size=5),
)
def test_any_valid_event_round_trips(table, keys, project, app_name, names):
    event = validate_event(table, keys, project, app_name, names)
    assert decode_event(event.to_json()) == event


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), st.from_regex(r"\{.*\}")))
def test_decoding_garbage_only_ever_raises_validation_error(raw):
    with contextlib.suppress(ValidationError):
        decode_event(raw)


def test_the_cursor_passes_an_entry_that_drops_the_tables_only_after_the_drop():
    """A barrier (`wait_for`) returns once the cursor is at its event: when that event is
    one the tracker cannot apply (it drops every table instead), the drop must have
    happened before the cursor moved there, or the barrier's caller reads a stale record.
    (A CI run once saw the cursor there and no drop yet: the drop came after the batch.)"""
    from cachework.cache.invalidation.listener import Tracker
    from cachework.cache.invalidation.log import Batch
    from tests.invalidation_helpers import FakeTarget

    class Watched(FakeTarget):
        def __setattr__(self, name, value):
            if name == "cursor" and hasattr(self, "dropped"):
                self.seen.append((value, len(self.dropped)))
            super().__setattr__(name, value)

    target = Watched(names=("categories",))
    target.seen = []
    tracker = Tracker(target, log=None)
    tracker.stats["epoch"] = "e"
    batch = Batch(
        "e",
        False,
        [("1-0", '{"v":1,"table":"categories","keys":[1]}'), ("2-0", "not json"),
         ("3-0", '{"v":1,"table":"categories","keys":[3]}')],
    )  # fmt: skip
    tracker._apply(batch)
    assert target.seen == [("1-0", 0), ("2-0", 1), ("3-0", 1)]  # dropped once, before 2-0
    assert target.invalidated == [("categories", [1]), ("categories", [3])]
