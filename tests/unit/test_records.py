"""cachework/records.py: keys from the outside world (a CLI passes text) coerced to a
column's type or refused with a message naming them; column values made JSON-safe
without losing exactness; records that later changes to their source never reach."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from cachework.errors import ValidationError
from cachework.records import coerce, freeze, json_value, make_record, record_from, to_json

U = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize(
    ("value", "python_type", "expected"),
    [
        (" 12 ", int, 12),
        (3.0, int, 3),
        (Decimal("4.00"), int, 4),
        (7, int, 7),
        (42, str, "42"),
        (U, str, str(U)),
        ("abc", str, "abc"),
        ("1.10", Decimal, Decimal("1.10")),
        (0.1, Decimal, Decimal("0.1")),  # from its shortest text, not the binary float
        ("2.5", float, 2.5),
        (str(U), uuid.UUID, U),
        ("2024-02-29T12:00:00", dt.datetime, dt.datetime(2024, 2, 29, 12)),
        ("2024-02-29", dt.date, dt.date(2024, 2, 29)),
        ("12:30", dt.time, dt.time(12, 30)),
        (True, bool, True),
        ("anything", None, "anything"),  # an unknown type leaves the value alone
        ([1], None, [1]),
    ],
)
def test_keys_are_coerced_to_the_columns_type(value, python_type, expected):
    result = coerce(value, python_type, "t id")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "python_type"),
    [
        (True, int),  # a boolean is never taken for a number
        (False, float),
        (3.5, int),
        (Decimal("4.5"), int),
        ("x", int),
        ("", int),
        (None, int),
        (None, str),
        (1.5, str),
        (True, str),
        ("1.2.3", Decimal),
        ("not-a-uuid", uuid.UUID),
        ("2024-02-30", dt.date),
        (None, uuid.UUID),
    ],
)
def test_a_key_that_cannot_be_coerced_is_named(value, python_type):
    with pytest.raises(ValidationError) as caught:
        coerce(value, python_type, "items id")
    assert str(caught.value) == f"items id={value!r} is not a valid {python_type.__name__}"
    assert caught.value.__cause__ is None  # one line, not the parser's chained error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("10.50"), "10.50"),  # exact, trailing zero kept
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (U, str(U)),
        (b"\x00\xff", "00ff"),
        (memoryview(b"\x01"), "01"),
        ({1: Decimal("1")}, {"1": "1"}),
        ((1, [Decimal("2")]), [1, ["2"]]),
        (frozenset({3}), [3]),
        (None, None),
        (True, True),
        (1.5, 1.5),
    ],
)
def test_json_values(value, expected):
    assert json_value(value) == expected


def test_a_record_is_a_frozen_copy():
    source = {"id": 1, "doc": {"tags": ["a"]}}
    record = make_record(source)
    source["doc"]["tags"].append("b")
    source["id"] = 2
    assert record["id"] == 1 and record["doc"]["tags"] == ("a",)
    with pytest.raises(TypeError):
        record["doc"]["tags"] = ()  # nested mappings are read-only too
    assert to_json(record) == {"id": 1, "doc": {"tags": ["a"]}}
    assert to_json(None) is None


def test_record_from_keeps_only_the_columns():
    class Row:
        _mapping = {"id": 1, "name": "n", "secret": "s"}

    class Instance:
        id, name, secret = 2, "m", "s"

    assert dict(record_from({"id": 0, "name": "o", "x": 1}, ["id", "name"])) == {
        "id": 0,
        "name": "o",
    }
    assert dict(record_from(Row(), ("id", "name"))) == {"id": 1, "name": "n"}
    assert dict(record_from(Instance(), ("id", "name"))) == {"id": 2, "name": "m"}
    assert freeze([{"a": [1]}]) == ({"a": (1,)},)
