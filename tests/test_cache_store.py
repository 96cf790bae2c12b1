"""The project cache store and the rebuild locks, on SQLite and PostgreSQL (and Redis)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, timedelta

import pytest
import sqlalchemy as sa

from cachework.cache.items import store
from cachework.cache.items.locks import DatabaseLocks, RedisLocks, Renewer
from cachework.errors import ValidationError

P1 = str(uuid.uuid4())
P2 = str(uuid.uuid4())


def test_set_and_get_item_round_trip(database):
    with database.session() as session:
        store.set_item(session, "inventory", "summary", {"a": [1, 2]}, project=P1, user="ann")
    with database.session() as session:
        item = store.get_item(session, "inventory", "summary", project=P1)
    assert item.data == {"a": [1, 2]}
    assert (item.project, item.app_name, item.name, item.user) == (
        P1,
        "inventory",
        "summary",
        "ann",
    )
    assert item.updated_at.tzinfo is not None and item.updated_at.utcoffset().total_seconds() == 0
    assert item.created_at == item.updated_at


def test_every_write_moves_update_time_and_keeps_created_at(database):
    times = []
    for value in range(5):
        with database.session() as session:
            store.set_item(session, "app", "item", {"v": value % 2}, project=P1)
        with database.session() as session:
            times.append(store.get_update_time(session, "app", "item", project=P1))
    assert times == sorted(times) and len(set(times)) == 5
    with database.session() as session:
        # Same data again, in one transaction: still moves.
        store.set_item(session, "app", "item", {"v": 0}, project=P1)
        first = store.get_update_time(session, "app", "item", project=P1)
        store.set_item(session, "app", "item", {"v": 0}, project=P1)
        second = store.get_update_time(session, "app", "item", project=P1)
        item = store.get_item(session, "app", "item", project=P1)
    assert times[-1] < first < second
    assert item.created_at == times[0]


@pytest.mark.parametrize("micros", [123_456, 999_999])  # 999_999: the carry to the next second
@pytest.mark.parametrize("bulk", [False, True])
def test_update_time_moves_even_past_a_stored_time_ahead_of_ours(database, micros, bulk):
    """Another process's write may carry a later stamp (or its clock may run ahead): the
    next write still moves `updated_at`, to at least that time plus one microsecond."""
    with database.session() as session:
        store.set_item(session, "app", "item", 1, project=P1)
        ahead = (store.now() + timedelta(hours=1)).replace(microsecond=micros)
        session.execute(sa.update(store.cache_items).values(updated_at=ahead))
    with database.session() as session:
        if bulk:
            store.set_items(
                session, [{"project": P1, "app_name": "app", "name": "item", "data": 2}]
            )
        else:
            store.set_item(session, "app", "item", 2, project=P1)
    with database.session() as session:
        item = store.get_item(session, "app", "item", project=P1)
    assert item.data == 2
    assert item.updated_at == ahead + timedelta(microseconds=1)
    assert item.updated_at.tzinfo is not None and item.created_at < ahead


def test_set_items_writes_one_statement_per_batch(database, monkeypatch):
    monkeypatch.setattr(store, "BATCH", 7)
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CACHE_ITEMS"):
            statements.append(statement)

    sa.event.listen(database.engine, "before_cursor_execute", record)
    try:
        items = [{"app_name": "bulk", "name": f"i{n}", "data": n} for n in range(30)]
        with database.session() as session:
            assert store.set_items(session, items) == 30
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", record)
    assert len(statements) == 5  # ceil(30 / 7)
    with database.session() as session:
        assert len(store.get_project_items(session, None, app_name="bulk")) == 30


def test_site_wide_and_project_items_never_collide(database):
    with database.session() as session:
        store.set_item(session, "app", "x", "site", project=None)
        store.set_item(session, "app", "x", "p1", project=P1)
        store.set_item(session, "app", "x", "site again", project=None)  # upsert, not a 2nd row
    with database.session() as session:
        assert store.get_item(session, "app", "x").data == "site again"
        assert store.get_item(session, "app", "x", project=P1).data == "p1"
        assert store.get_item(session, "app", "x", project=P2) is None
        assert [i.data for i in store.get_project_items(session, None)] == ["site again"]
        assert [i.data for i in store.get_project_items(session, P1)] == ["p1"]
        rows = session.execute(sa.select(sa.func.count()).select_from(store.cache_items))
        assert rows.scalar_one() == 2
    with database.session() as session:
        assert store.delete_items(session, site_wide=True) == 1
        assert store.get_item(session, "app", "x", project=P1).data == "p1"


def test_a_project_item_is_not_found_when_asking_site_wide(database):
    with database.session() as session:
        store.set_item(session, "app", "only-project", 1, project=P1)
        assert store.get_item(session, "app", "only-project") is None
        assert store.get_update_time(session, "app", "only-project") is None


def test_set_items_bulk_upserts_in_batches(database, monkeypatch):
    monkeypatch.setattr(store, "BATCH", 7)
    items = [
        {"project": P1 if n % 2 else None, "app_name": "bulk", "name": f"i{n}", "data": {"n": n}}
        for n in range(30)
    ]
    with database.session() as session:
        assert store.set_items(session, items, user="bob") == 30
        assert store.get_item(session, "bulk", "i4").user == "bob"
    items[3] = {**items[3], "data": "changed"}
    with database.session() as session:
        before = store.get_update_time(session, "bulk", "i3", project=P1)
        # Duplicates within one call: the last one wins, no "row affected twice" error.
        assert store.set_items(session, [*items, {**items[3], "data": "last"}]) == 30
    with database.session() as session:
        assert store.get_item(session, "bulk", "i3", project=P1).data == "last"
        assert store.get_update_time(session, "bulk", "i3", project=P1) > before
        assert len(store.get_project_items(session, P1, app_name="bulk")) == 15
        assert len(store.get_project_items(session, None)) == 15
        assert store.get_item(session, "bulk", "i4").user is None  # the last writer's


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"project": ""}, "project='' must be a project key"),
        ({"project": "p\x00"}, "project='p\\x00' must be a project key"),
        ({"project": "p" * 256}, "must be a project key (a non-empty string of <= 255"),
        ({"project": 4.2}, "project=4.2 must be a project key"),
        ({"project": True}, "project=True must be a project key"),
        ({"data": {"when": object()}}, "app/x (project " + P1 + "): data is not JSON"),
        ({"data": float("nan")}, "data is not JSON-serializable"),
        ({"data": "x" * 200, "max_bytes": 100}, "over the limit of 100"),
        ({"app_name": ""}, "app_name='' must be a non-empty string"),
        ({"data_type": "xml"}, "data_type='xml' is not one of json"),
        ({"name": "a\x00b"}, "name='a\\x00b' must be a non-empty string"),
        ({"user": "u\x00"}, "user='u\\x00' must be a string"),
        ({"user": "u" * 256}, "must be a string of <= 255"),
    ],
)
def test_bad_items_are_refused_naming_the_item_and_write_nothing(database, kwargs, message):
    args = {"app_name": "app", "name": "x", "data": 1, "project": P1, **kwargs}
    with database.session() as session, pytest.raises(ValidationError, match=_re(message)):
        store.set_item(session, **args)
    with database.session() as session:
        bulk = [{"app_name": "app", "name": "ok", "data": 1}, {**args}]
        max_bytes = bulk[1].pop("max_bytes", store.DEFAULT_MAX_BYTES)
        with pytest.raises(ValidationError):
            store.set_items(session, bulk, max_bytes=max_bytes)
        assert (
            session.execute(sa.select(sa.func.count()).select_from(store.cache_items)).scalar() == 0
        )


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_project_keys_of_any_type_are_stored_as_strings(database):
    """The store takes keys already canonical
    (cachework.cache.items.projects.ProjectSource.canonical);
    uuid.UUID and int values become their canonical strings, other strings are kept."""
    with database.session() as session:
        store.set_item(session, "app", "x", 1, project=uuid.UUID(P1.upper()))
        assert store.get_item(session, "app", "x", project=P1).project == P1
        store.set_item(session, "app", "x", 2, project=42)
        assert store.get_item(session, "app", "x", project="42").data == 2
        long_key = "k" * 255  # text keys up to 255 characters (cache_items.project)
        store.set_item(session, "app", "x", 3, project=long_key)
        assert store.get_item(session, "app", "x", project=long_key).project == long_key
        assert store.get_item(session, "app", "x", project="K" * 255) is None  # not folded


def test_delete_items_filters_and_counts(database):
    with database.session() as session:
        for project in (P1, P2, None):
            for app in ("a", "b"):
                store.set_item(session, app, "n1", 1, project=project)
                store.set_item(session, app, "n2", 2, project=project)
    with database.session() as session:
        assert store.delete_items(session, project=P1, app_name="a", name="n1") == 1
        assert store.delete_items(session, project=P1) == 3
        assert len(store.get_project_items(session, P2)) == 4
        assert store.delete_items(session, app_name="b") == 4
        assert store.delete_items(session) == 4
        with pytest.raises(ValidationError, match="contradicts site_wide"):
            store.delete_items(session, project=P1, site_wide=True)


def test_times_are_utc_aware_on_every_dialect(database):
    with database.session() as session:
        store.set_item(session, "app", "x", 1)
        stamp = store.get_update_time(session, "app", "x")
    assert stamp.tzinfo is not None and stamp.astimezone(UTC) == stamp


# --- locks --------------------------------------------------------------------------------


@pytest.fixture(params=["database", "redis"])
def locks(request, database):
    if request.param == "database":
        return DatabaseLocks(database.engine, ttl_ms=300)
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    request.addfinalizer(client.close)
    return RedisLocks(client, ttl_ms=300)


def test_lock_is_exclusive_and_released_only_by_its_owner(locks):
    first, second = locks.lock("app:p"), locks.lock("app:p")
    assert first.acquire()
    assert not second.acquire()
    second.release()  # not the owner: no effect
    assert not second.acquire()
    assert locks.lock("app:other").acquire()  # other scopes are independent
    first.release()
    assert second.acquire()
    second.release()


def test_lock_expires_unless_renewed(locks):
    holder, other = locks.lock("app:p"), locks.lock("app:p")
    assert holder.acquire()
    with Renewer(holder, locks.ttl_ms):
        time.sleep(0.5)  # longer than the 300 ms TTL: only renewal keeps it
        assert not other.acquire()
        assert not holder.lost
    time.sleep(0.4)
    assert other.acquire()  # expired after renewal stopped
    assert not holder.renew()  # and the old holder knows it lost it
    other.release()


def test_renewer_marks_a_stolen_lock_as_lost(locks):
    holder = locks.lock("app:p")
    assert holder.acquire()
    with Renewer(holder, locks.ttl_ms):
        holder.release()  # as if it expired and someone else could take it
        deadline = time.monotonic() + 3
        while not holder.lost and time.monotonic() < deadline:
            time.sleep(0.02)
    assert holder.lost


def test_dirty_names_are_taken_once(locks):
    """Taken names stay taken until `finish()` (a holder killed before it leaves them to
    the next one), then they are gone."""
    lock = locks.lock("app:p")
    assert not lock.is_dirty()
    lock.mark_dirty(["a", "b"])
    locks.lock("app:p").mark_dirty(["b", "c"])
    assert lock.is_dirty()
    assert lock.take_dirty() == {"a", "b", "c"}
    assert not lock.is_dirty()
    lock.finish()
    assert lock.take_dirty() == set()
    lock.mark_dirty(None)
    assert lock.take_dirty() == {"*"}
