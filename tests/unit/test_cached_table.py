"""CachedTable on SQLite: reads, coverage, invalidation kinds, adjust, errors, statistics."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from cachework.cache.tables.indexes import PrimaryKey, Spec, difference, overlaps, within
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable
from cachework.errors import ValidationError
from cachework.records import coerce, make_record, to_json
from tests.cached_table_helpers import INDEXES, items, make_engine, make_table, row, write


@pytest.fixture
def engine(sqlite_url):
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def table(engine):
    return make_table(engine)


def names(records) -> list[str]:
    return sorted(r["name"] for r in records)


def test_first_read_loads_then_every_index_reads_from_memory(table):
    assert table.stats()["loaded"] is False
    assert table.get(1)["name"] == "n1.0"
    fetches = table.source.fetches
    assert table.get_first_record("code", "c2")["id"] == 2
    assert sorted(r["id"] for r in table.get_records("grp", 0)) == [3, 6, 9, 12, 15, 18]
    assert [r["id"] for r in table.get_records("score", ge=30, lt=60)] == [3, 4, 5]
    assert table.get(999) is None  # covered: absent without asking the source
    assert table.source.fetches == fetches
    stats = table.stats()
    assert stats["loaded"] and stats["records"] == 20 and stats["source_reads"] == 0
    assert stats["hits"] == 4 and stats["misses"] == 1 and stats["loads"] == 1  # get(999)


def test_records_are_plain_immutable_mappings(table):
    record = table.get(1)
    assert not hasattr(record, "_sa_instance_state")
    with pytest.raises(TypeError):
        record["name"] = "changed"
    values = row(1)
    frozen = make_record(values)
    values["name"] = "changed"
    assert frozen["name"] == "n1.0"


def test_json_values_are_frozen_too(engine):
    """A JSON column's dicts and lists cannot be changed through a record either."""
    docs = sa.Table(
        "ct_docs",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("doc", sa.JSON),
    )
    docs.create(engine)
    with engine.begin() as conn:
        conn.execute(docs.insert(), [{"id": 1, "doc": {"tags": ["a"], "n": {"x": 1}}}])
    table = CachedTable([PrimaryKey("id")], SelectSource(engine, docs), name="docs")
    doc = table.get(1)["doc"]
    with pytest.raises(TypeError):
        doc["n"]["x"] = 2
    with pytest.raises(AttributeError):
        doc["tags"].append("b")
    assert to_json(table.get(1)) == {"id": 1, "doc": {"tags": ["a"], "n": {"x": 1}}}
    frozen = make_record({"doc": {"k": [1]}})
    assert frozen["doc"]["k"] == (1,)


def test_invalidated_record_is_refreshed_by_one_small_query(engine, table):
    table.get(1)
    write(engine, 1, name="new")
    assert table.get(1)["name"] == "n1.0"  # cached: the database is not watched
    table.invalidate_records([Spec.of("id", 1)], [Spec.of("id", 1)])
    fetches = table.source.fetches
    assert table.stats()["invalid"] == 1
    assert table.get(1)["name"] == "new"
    assert table.source.fetches == fetches + 1
    assert table.get(1)["name"] == "new"
    assert table.source.fetches == fetches + 1
    stats = table.stats()
    assert stats["refreshes"] == 1 and stats["invalid"] == 0 and stats["pending"] == 0
    assert stats["last_refresh"] is not None


def test_unnamed_index_is_dirty_and_its_reads_refresh(engine, table):
    table.get(1)
    write(engine, 2, code="zz")
    table.invalidate_keys([2])  # names the primary key only: code, grp, score go dirty
    assert table.stats()["dirty"] == ["code", "grp", "score"]
    assert table.get(1)["name"] == "n1.0"  # pk 1 is not named: still valid, no refresh
    assert table.stats()["refreshes"] == 0
    assert table.get_first_record("code", "zz")["id"] == 2
    assert table.stats()["refreshes"] == 1
    with pytest.raises(KeyError):
        table.get_first_record("code", "c2")


def test_invalidation_by_secondary_index_dirties_the_primary_key(engine, table):
    table.get(1)
    write(engine, 4, name="four")
    table.invalidate_records([Spec.of("code", "c4")])
    assert table.stats()["dirty"] == ["grp", "id", "score"]
    assert table.get(4)["name"] == "four"


def test_index_named_in_one_list_only_is_dirty(engine, table):
    """The old code alone cannot find the record under its new code: reads by code refresh."""
    table.get(1)
    write(engine, 1, code="zz")
    table.invalidate_records([Spec.of("code", "c1"), Spec.of("id", 1)], [Spec.of("id", 1)])
    assert table.stats()["dirty"] == ["code", "grp", "score"]
    assert table.get_first_record("code", "zz")["id"] == 1
    assert table.get_records("code", "c1") == []
    assert table.stats()["refreshes"] == 1


def test_superset_invalidation_and_moved_record(engine, table):
    table.get(1)
    write(engine, 1, score=500, name="moved")
    write(engine, 2, name="two")
    table.invalidate_records(
        [Spec.of("id", 1), Spec.of("score", 10)],
        [Spec.of("id", 1, 2), Spec.of("score", 500)],  # new names a superset
    )
    assert [r["id"] for r in table.get_records("score", ge=0, lt=100)] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert [r["name"] for r in table.get_records("score", ge=400, lt=600)] == ["moved"]
    assert table.get(2)["name"] == "two"


def test_deleted_and_created_rows(engine, table):
    table.get(1)
    with engine.begin() as conn:
        conn.execute(items.delete().where(items.c.id == 3))
        conn.execute(items.insert(), [row(21)])
    table.invalidate_keys([3, 21])
    assert table.get(3) is None
    assert table.get(21)["code"] == "c21"
    assert table.get_first_record("code", "c21")["id"] == 21
    assert table.stats()["records"] == 20


def test_whole_table_invalidation_reloads(engine, table):
    table.get(1)
    with engine.begin() as conn:
        conn.execute(items.update().values(name="all"))
    table.invalidate_all()
    assert {r["name"] for r in table.get_records("id", everything=True)} == {"all"}


def test_no_forced_refresh_serves_old_records_until_refresh_invalid(engine, table):
    table.get(1)
    write(engine, 1, name="new")
    table.invalidate_records([Spec.of("id", 1)], force_refresh_on_next_read=False)
    assert table.get(1)["name"] == "n1.0"
    assert table.refresh_invalid() == 1
    assert table.get(1)["name"] == "new"
    assert table.refresh_invalid() == 0


def test_filtered_select_and_bare_table_as_sources(engine):
    """A filtered query: rows leaving or entering its WHERE leave or enter the cache."""
    filtered = CachedTable(
        INDEXES, SelectSource(engine, sa.select(items).where(items.c.grp != 0)), name="f"
    )
    assert filtered.get(3) is None and filtered.get(4)["code"] == "c4"
    assert filtered.stats()["records"] == 14
    write(engine, 3, grp=1)  # enters the filter
    write(engine, 4, grp=0)  # leaves it
    filtered.invalidate_keys([3, 4])
    assert filtered.get(3)["grp"] == 1 and filtered.get(4) is None
    assert sorted(r["id"] for r in filtered.get_records("grp", 0)) == []
    assert filtered.stats()["records"] == 14 and filtered.stats()["source_reads"] == 0
    whole = CachedTable(INDEXES, SelectSource(engine, items), name="whole")
    assert whole.get(4)["grp"] == 0 and whole.stats()["records"] == 20


def test_partial_coverage_sends_uncovered_reads_to_the_source(engine):
    table = make_table(engine, autoload=Spec.range("score", 0, 100))
    assert [r["id"] for r in table.get_records("score", ge=20, lt=50)] == [2, 3, 4]
    fetches = table.source.fetches
    assert table.get(5)["id"] == 5  # stored: a unique key found in memory is the answer
    assert table.source.fetches == fetches
    assert table.get(15)["id"] == 15  # not covered: read from the source, not stored
    assert [r["id"] for r in table.get_records("score", ge=80, lt=120)] == [8, 9, 10, 11]
    assert table.get_records("grp", 1)  # non-unique index outside coverage: source
    assert table.source.fetches == fetches + 3
    stats = table.stats()
    assert stats["records"] == 9 and stats["misses"] == 3


def test_adjust_loads_new_range_and_expires_old(engine):
    table = make_table(engine, autoload=Spec.range("score", 0, 100))
    table.get(1)
    assert table.adjust("score", ge=50, lt=150) == {"expired": 4, "loaded": 5}
    assert table.stats()["records"] == 10
    fetches = table.source.fetches
    assert [r["id"] for r in table.get_records("score", ge=50, lt=150)] == list(range(5, 15))
    assert table.source.fetches == fetches
    assert table.get(2)["id"] == 2  # expired: now from the source
    assert table.source.fetches == fetches + 1
    assert table.adjust(Spec.all("id")) == {"expired": 0, "loaded": 20}
    assert table.stats()["records"] == 20


def test_adjust_refreshes_invalid_records_first(engine):
    table = make_table(engine, autoload=Spec.range("score", 0, 100))
    table.get(1)
    write(engine, 6, name="six")
    table.invalidate_keys([6])
    table.adjust("score", ge=50, lt=150)
    assert table.stats()["pending"] == 0
    assert table.get(6)["name"] == "six"


def test_explicit_load_and_readiness(engine):
    table = make_table(engine, autoload=False, read_timeout=0.2)
    assert table.loaded(timeout=0.01) is False
    assert table.load() == 20
    assert table.loaded(timeout=0) is True
    with pytest.raises(ValidationError, match="already loaded"):
        table.load()


def test_clear_drops_records_and_next_read_reloads(engine, table):
    table.get(1)
    write(engine, 1, name="new")
    table.clear()
    assert table.stats()["loaded"] is False
    assert table.get(1)["name"] == "new"
    assert table.stats()["loads"] == 2


def test_invalidation_of_unloaded_table_is_a_noop(table):
    table.invalidate_keys([1])
    assert table.stats()["pending"] == 0


def test_insert_records_is_refused_after_an_invalidation(engine, table):
    table.get(1)
    token = table.version()
    record = make_record(row(50))
    table.invalidate_keys([2])
    assert table.insert_records([record], token) == 0
    assert table.insert_records([record], table.version()) == 1
    assert table.get(50)["code"] == "c50"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: t.get_records("nope", 1), "index 'nope' does not exist"),
        (lambda t: t.get_records("code", ge="a"), "not a Range index"),
        (lambda t: t.get_records("code"), "names no values"),
        (lambda t: t.invalidate_records([]), "old_specs is empty"),
        (
            lambda t: t.invalidate_records([Spec.of("id", 1), Spec.of("id", 2)]),
            "names an index twice",
        ),
        (lambda t: t.invalidate_records(["id"]), "not a Spec"),
        (lambda t: t.coerce_key("abc"), "items id='abc' is not a valid int"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(table, call, message):
    table.get(1)
    with pytest.raises(ValidationError, match=message):
        call(table)
    assert table.stats()["pending"] == 0 and table.stats()["records"] == 20


def test_get_first_record_raises_key_error_when_none(table):
    with pytest.raises(KeyError):
        table.get_first_record("code", "missing")


# --- pure parts ------------------------------------------------------------------------------

R = Spec.range
V = Spec.of


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (V("i", 1, 2), V("i", 2, 3), True),
        (V("i", 1), V("i", 2), False),
        (V("i", 5), R("i", 0, 5), False),
        (V("i", 4), R("i", 0, 5), True),
        (R("i", 0, 5), R("i", 5, 9), False),
        (R("i", 0, 6), R("i", 5, 9), True),
        (R("i", None, 1), R("i", 0, None), True),
        (Spec.all("i"), V("i", 1), True),
    ],
)
def test_overlaps(a, b, expected):
    assert overlaps(a, b) is expected and overlaps(b, a) is expected


@pytest.mark.parametrize(
    "a, cover, expected",
    [
        (R("i", 1, 4), R("i", 0, 5), True),
        (R("i", 1, 6), R("i", 0, 5), False),
        (R("i", None, 4), R("i", 0, 5), False),
        (V("i", 1, 4), R("i", 0, 5), True),
        (R("i", 1, 2), V("i", 1), False),
        (V("j", 1), R("i", 0, 5), False),
        (Spec.all("i"), R("i", None, None), False),
        (V("j", 1), Spec.all("i"), True),
    ],
)
def test_within(a, cover, expected):
    assert within(a, cover) is expected


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (R("i", 0, 10), R("i", 5, 15), [R("i", 0, 5)]),
        (R("i", 5, 15), R("i", 0, 10), [R("i", 10, 15)]),
        (R("i", 0, 20), R("i", 5, 10), [R("i", 0, 5), R("i", 10, 20)]),
        (R("i", 0, 5), R("i", 10, 20), [R("i", 0, 5)]),
        (R("i", 5, 10), R("i", 0, 20), []),
        (V("i", 1, 2, 3), V("i", 2), [V("i", 1, 3)]),
        (Spec.all("i"), R("i", 0, 5), None),
    ],
)
def test_difference(a, b, expected):
    assert difference(a, b) == expected


def test_to_json_and_coerce():
    record = make_record(
        {
            "price": Decimal("1.10"),
            "at": dt.datetime(2026, 1, 2, 3, 4),
            "u": uuid.UUID(int=1),
            "n": None,
        }
    )
    assert to_json(record) == {
        "price": "1.10",
        "at": "2026-01-02T03:04:00",
        "u": "00000000-0000-0000-0000-000000000001",
        "n": None,
    }
    assert coerce(" 12", int, "k") == 12 and coerce(3, str, "k") == "3"
    for bad in (True, "1.5", None, [1]):
        with pytest.raises(ValidationError, match="k="):
            coerce(bad, int, "k")
