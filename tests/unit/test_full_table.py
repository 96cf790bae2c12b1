"""FullTableCache: by id, by cache key with a find-or-create hook, reset, attach."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cachework.cache.tables.full_table import FullTableCache, attach
from cachework.errors import ValidationError
from demo.models import Category
from demo.seed import seed


@pytest.fixture
def categories(sqlite_url):
    from tests.conftest import _database

    gen = _database(sqlite_url)
    database = next(gen)
    with database.session() as session:
        seed(session, projects=1, products=0)
    yield database, FullTableCache(database.engine, Category, key_column="code")
    next(gen, None)


def create_hook(database, code):
    def hook():
        with database.session() as session:
            found = session.scalar(sa.select(Category).where(Category.code == code))
            if found is not None:
                return found, False
            session.add(Category(id=100, code=code, name="New"))
        with database.session() as session:
            return session.get(Category, 100), True

    return hook


def test_by_id_and_by_cache_key_return_plain_records(categories):
    _database, cache = categories
    record = cache.by_id(2)
    assert dict(record) == {"id": 2, "code": "garden", "name": "Garden"}
    assert cache.by_cache_key("garden") == (record, False)
    assert cache.by_id(999) is None
    assert cache.by_cache_key("nope") == (None, False)
    assert cache.stats()["records"] == 8 and cache.stats()["loads"] == 1


def test_miss_goes_through_the_hook_and_is_cached(categories):
    database, cache = categories
    record, new = cache.by_cache_key("fresh", lookup_hook=create_hook(database, "fresh"))
    assert new is True and record["id"] == 100 and record["name"] == "New"
    fetches = cache.source.fetches
    assert cache.by_cache_key("fresh") == (record, False)  # no hook needed now
    assert cache.by_id(100) == record
    assert cache.source.fetches == fetches
    assert cache.by_cache_key("none", lookup_hook=lambda: None) == (None, False)


def test_hook_result_is_not_cached_when_invalidated_meanwhile(categories):
    database, cache = categories
    cache.by_id(1)

    def racing_hook():
        found = create_hook(database, "racy")()
        cache.invalidate_keys([100])  # e.g. the row changed again while we looked
        return found

    record, _new = cache.by_cache_key("racy", lookup_hook=racing_hook)
    assert record["code"] == "racy"
    assert cache.stats()["records"] == 8  # not inserted: it might be stale
    assert cache.by_cache_key("racy")[0]["id"] == 100  # the dirty index refreshed from the db


def test_hook_result_is_not_cached_when_reset_meanwhile(categories):
    """The reference's reset-during-lookup race: the hook's row is returned, not cached
    into the emptied cache, and the next read repopulates from the database."""
    database, cache = categories
    cache.by_id(1)

    def resetting_hook():
        found = create_hook(database, "reset")()
        cache.reset()
        return found

    record, new = cache.by_cache_key("reset", lookup_hook=resetting_hook)
    assert new is True and record["id"] == 100
    assert cache.stats()["loaded"] is False and cache.stats()["records"] == 0
    assert cache.by_id(100)["code"] == "reset"
    assert cache.stats()["records"] == 9 and cache.stats()["loads"] == 2


def test_hook_returning_another_key_is_rejected(categories):
    _database, cache = categories
    with pytest.raises(ValidationError, match="lookup_hook"):
        cache.by_cache_key("other", lookup_hook=lambda: {"id": 1, "code": "x", "name": "y"})


def test_reset_repopulates_on_next_read(categories):
    database, cache = categories
    cache.by_id(1)
    with database.engine.begin() as conn:
        conn.execute(sa.update(Category).where(Category.id == 1).values(name="Renamed"))
    assert cache.by_id(1)["name"] == "Tools"
    cache.reset()
    assert cache.stats()["loaded"] is False
    assert cache.by_id(1)["name"] == "Renamed"
    assert cache.stats()["loads"] == 2


def test_attach_puts_the_row_in_a_session_without_a_query(categories):
    database, cache = categories
    record = cache.by_id(3)
    statements: list[str] = []
    sa.event.listen(database.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with database.session() as session:
        instance = attach(session, Category, record)
        assert isinstance(instance, Category) and instance.code == "kitchen"
        assert instance in session and not session.dirty and not session.new
        assert attach(session, Category, record) is instance
        assert statements == []
        instance.name = "Cooking"  # the caller may change it like any loaded row
    with database.session() as session:
        assert session.get(Category, 3).name == "Cooking"
