"""Project cache rebuilds in-process (SQLite and PostgreSQL): demo items against independent
SQL, error capture, the dirty-flag loop, validation, discovery and the CLI."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cachework.cache import jobs
from cachework.cache.items import plugins as cache_plugins
from cachework.cache.items import store
from cachework.cache.items.locks import DatabaseLocks, RedisLocks, scope_key
from cachework.cache.items.sync import rebuild, rebuild_scope
from cachework.errors import ConfigError, NotFoundError, ValidationError
from demo.plugin import InventoryPlugin
from demo.seed import project_uuid, seed
from tests.project_cache_helpers import (
    FlakyPlugin,
    actual_demo_items,
    expected_demo_items,
    price_total,
)

EMPTY = str(uuid.UUID(int=7))


@pytest.fixture
def seeded(database, runtime):
    with database.session() as session:
        seed(session, projects=4, products=90)
        session.execute(
            sa.text("INSERT INTO projects (uuid, title) VALUES (:u, 'Empty')"), {"u": EMPTY}
        )
    return database


def test_demo_items_equal_independent_sql_for_every_project(runtime, seeded):

    result = jobs.rebuild_items(runtime, None, None, None, user="tester")
    # 5 projects x 2 items, none site-wide
    assert result == {"updated": 10, "projects": 5, "errors": [], "deferred": 0}
    with seeded.session() as session:
        expected = expected_demo_items(session)
        assert actual_demo_items(session) == expected
        assert expected[EMPTY]["summary"] == {"products": 0, "active": 0, "cents": 0}
        assert store.get_item(session, "inventory", "summary", project=EMPTY).data == {
            "products": 0,
            "active": 0,
            "total_value": "0.00",
        }
        assert store.get_project_items(session, None) == []


def test_rebuild_items_limits_to_names_and_goes_through_the_lock(runtime, seeded):

    project = project_uuid(1)
    jobs.rebuild_items(runtime, project, "inventory", None)
    with seeded.session() as session:
        before = {
            n: store.get_update_time(session, "inventory", n, project=project)
            for n in ("summary", "by_category")
        }
    summary = jobs.rebuild_items(runtime, project, "inventory", ["summary"])
    assert summary == {"updated": 1, "projects": 1, "errors": [], "deferred": 0}
    with seeded.session() as session:
        assert (
            store.get_update_time(session, "inventory", "summary", project=project)
            > before["summary"]
        )
        assert (
            store.get_update_time(session, "inventory", "by_category", project=project)
            == before["by_category"]
        )
        # The lock was released and the dirty names consumed.
        assert session.execute(sa.text("SELECT COUNT(*) FROM cache_dirty")).scalar() == 0
        assert (
            session.execute(
                sa.text("SELECT COUNT(*) FROM cache_locks WHERE owner IS NOT NULL")
            ).scalar()
            == 0
        )


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("nope", None, None), ValidationError, "project='nope' is not a uuid"),
        ((EMPTY.replace("0", "1"), None, None), NotFoundError, "does not exist"),
        ((None, "no-such-app", None), NotFoundError, "app_name='no-such-app'"),
        ((None, "inventory", ["summary", "bogus"]), NotFoundError, "'bogus' unknown"),
        ((None, None, "summary"), ValidationError, "must be a list of item names"),
    ],
)
def test_rebuild_items_refuses_bad_input_and_changes_nothing(runtime, seeded, args, error, message):

    with pytest.raises(error, match=message):
        jobs.rebuild_items(runtime, *args)
    with seeded.session() as session:
        assert session.execute(sa.text("SELECT COUNT(*) FROM cache_items")).scalar() == 0


def test_a_failing_plugin_is_reported_and_leaves_no_partial_item(seeded):
    failing = project_uuid(2)
    with seeded.session() as session:
        session.execute(
            sa.text("UPDATE projects SET title = 'FAIL me' WHERE uuid = :u"), {"u": failing}
        )
    locks = DatabaseLocks(seeded.engine, ttl_ms=10_000)
    plugins = [FlakyPlugin(), InventoryPlugin()]
    results = [rebuild(seeded.session, locks, plugins, project_uuid(i)) for i in range(4)]
    errors = [e for r in results for e in r.errors]
    assert errors == [f"flaky failed for project {failing}: RuntimeError: cannot rebuild 'FAIL me'"]
    with seeded.session() as session:
        assert store.get_item(session, "flaky", "value", project=failing) is None  # no partial
        assert store.get_item(session, "inventory", "summary", project=failing) is not None
        for i in (0, 1, 3):
            assert store.get_item(session, "flaky", "value", project=project_uuid(i)).data == {
                "title": f"Project {i + 1}"
            }


def test_a_request_during_a_rebuild_is_not_lost(seeded):
    """A second request while the first holds the lock is deferred, and the holder runs
    another round that sees the change made before that request."""
    project = project_uuid(0)
    locks = DatabaseLocks(seeded.engine, ttl_ms=10_000)
    calls: list[str | None] = []

    class Interrupted(InventoryPlugin):
        def update_cache(self, store_, session, project=None, name=None):
            calls.append(name)
            super().update_cache(store_, session, project=project, name=name)
            if len(calls) == 1:  # mid-rebuild: data changes, then someone asks again
                with seeded.session() as other:
                    other.execute(
                        sa.text("UPDATE products SET active = false WHERE project_uuid = :p"),
                        {"p": project},
                    )
                nested = rebuild_scope(seeded.session, locks, self, project, ["summary"])
                assert nested.deferred and nested.updated == 0

    result = rebuild_scope(seeded.session, locks, Interrupted(), project, None)
    assert calls == [None, "summary"]
    assert result.rounds == 2 and result.updated == 3 and not result.deferred
    with seeded.session() as session:
        assert store.get_item(session, "inventory", "summary", project=project).data["active"] == 0


def test_an_abort_exception_propagates_and_leaves_the_names_dirty(seeded):
    """A time limit inside a plugin (an `abort_on` type) is not a plugin error: it stops
    the rebuild, writes nothing, and leaves the names dirty for the next rebuild."""
    project = project_uuid(0)
    locks = DatabaseLocks(seeded.engine, ttl_ms=10_000)

    class TimeUp(Exception):
        pass

    class Slow(InventoryPlugin):
        def update_cache(self, store_, session, project=None, name=None):
            raise TimeUp("soft time limit")

    with pytest.raises(TimeUp):
        rebuild_scope(seeded.session, locks, Slow(), project, ["summary"], abort_on=(TimeUp,))
    lock = locks.lock(scope_key(project, "inventory"))
    assert lock.is_dirty()  # the request survives the abort
    with seeded.session() as session:
        assert store.get_item(session, "inventory", "summary", project=project) is None
    result = rebuild_scope(seeded.session, locks, InventoryPlugin(), project, ["by_category"])
    assert result.updated == 2 and not lock.is_dirty()  # it redid "summary" as well
    with seeded.session() as session:
        assert store.get_item(session, "inventory", "summary", project=project) is not None


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_concurrent_rebuilds_never_overlap_and_the_last_change_wins(pg_database, backend, request):
    """Threads that each commit a change and then ask for a rebuild of one scope: the
    rebuilds never overlap (recorded intervals), and the final item reflects the last
    change, with the database lock and with the Redis lock."""
    database = pg_database
    with database.session() as session:
        seed(session, projects=2, products=40)
    project = project_uuid(0)
    if backend == "database":
        locks = DatabaseLocks(database.engine, ttl_ms=5_000)
    else:
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        request.addfinalizer(client.close)
        locks = RedisLocks(client, ttl_ms=5_000)
    intervals: list[tuple[float, float]] = []

    class Slow:
        app_name = "slow"

        def update_cache(self, store_, session, project=None, name=None):
            start = time.monotonic()
            time.sleep(0.03)
            store_.set_item("total", price_total(session, project))  # read mid-rebuild
            time.sleep(0.03)
            intervals.append((start, time.monotonic()))

    def request_rebuild(step: int) -> None:
        with database.session() as session:
            session.execute(
                sa.text("UPDATE products SET price = price + 1 WHERE project_uuid = :p"),
                {"p": project},
            )
        results.append(rebuild_scope(database.session, locks, Slow(), project))

    results: list = []
    threads = [threading.Thread(target=request_rebuild, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    assert all(not r.errors for r in results) and len(results) == 8
    assert any(r.deferred for r in results)  # some requests did arrive during a rebuild
    assert 1 <= len(intervals) < 8  # ... and were folded into a running one
    ordered = sorted(intervals)
    for (_s1, end), (start, _e2) in itertools.pairwise(ordered):
        assert start >= end, f"rebuilds overlapped: {ordered}"
    with database.session() as session:
        assert store.get_item(session, "slow", "total", project=project).data == price_total(
            session, project
        )
        assert not locks.lock(scope_key(project, "slow")).is_dirty()


def test_a_full_sync_skips_a_project_deleted_after_the_fan_out(runtime, seeded):

    gone = str(uuid.UUID(int=99))
    assert jobs.sync_scope(runtime, gone, missing_ok=True) == {
        "updated": 0,
        "projects": 0,
        "errors": [],
    }
    with pytest.raises(NotFoundError, match="does not exist"):
        jobs.sync_scope(runtime, gone)  # asked for by name: still an error
    with pytest.raises(NotFoundError, match="app_name='ghost'"):
        jobs.sync_scope(runtime, project_uuid(0), "ghost", missing_ok=True)  # not about the project
    assert jobs.sync_scope(runtime, project_uuid(0), "inventory", missing_ok=True) == {
        "updated": 2,
        "projects": 1,
        "errors": [],
    }


def test_a_lost_lock_connection_is_a_transient_error(runtime, seeded, monkeypatch):
    """Redis gone while marking a scope dirty: a TransientError (the task retries), not
    a failure that loses the request."""
    import redis

    from cachework.errors import TransientError

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(runtime, "_locks", RedisLocks(dead, ttl_ms=1_000))
    with pytest.raises(TransientError, match=f"project {project_uuid(0)} unavailable"):
        jobs.sync_scope(runtime, project_uuid(0), "inventory")
    dead.close()
    with seeded.session() as session:
        assert store.get_project_items(session, project_uuid(0)) == []


def test_discovery_from_model_modules_and_entry_points(monkeypatch):
    found = cache_plugins.discover(["demo.models", "tests.project_cache_helpers"], None)
    assert list(found) == ["flaky", "inventory", "recorder"]

    class Point:
        name, value = "inventory", "demo.plugin:InventoryPlugin"

    monkeypatch.setattr(cache_plugins, "entry_points", lambda group: [Point()])
    both = cache_plugins.discover(["demo.models"])  # the same class twice counts once
    assert list(both) == ["inventory"] and isinstance(both["inventory"], InventoryPlugin)

    class Clash:
        name, value = "other", "tests.project_cache_helpers:FlakyPlugin"

    monkeypatch.setattr(FlakyPlugin, "app_name", "inventory")
    monkeypatch.setattr(cache_plugins, "entry_points", lambda group: [Point(), Clash()])
    with pytest.raises(ConfigError, match="two cache plugins claim app 'inventory'"):
        cache_plugins.discover()


def test_a_broken_plugin_reference_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'demo\.plugin:Nope'"):
        cache_plugins._load("demo.plugin:Nope", "a test")
    with pytest.raises(ConfigError, match="has no `app_name`"):
        cache_plugins._load("demo.seed:seed", "a test")


def test_delete_for_one_project_leaves_the_others(runtime, seeded):

    jobs.rebuild_items(runtime, None, None, None)
    target = project_uuid(3)
    assert jobs.delete_items(runtime, project=target) == {"deleted": 2}
    with seeded.session() as session:
        assert store.get_project_items(session, target) == []
        assert all(len(store.get_project_items(session, project_uuid(i))) == 2 for i in range(3))
    with pytest.raises(NotFoundError, match="app_name='ghost'"):
        jobs.delete_items(runtime, app_name="ghost")
    with pytest.raises(ValidationError, match="'bad' is not a uuid"):
        jobs.delete_items(runtime, project="bad")
    assert jobs.delete_items(runtime) == {"deleted": 8}


# --- CLI --------------------------------------------------------------------------------------


def test_cli_sync_and_delete_in_process(seeded):
    from cachework.worker.cli import main

    runner = CliRunner()
    synced = runner.invoke(main, ["sync-cache", "--user", "cli"])
    assert synced.exit_code == 0, synced.output
    assert "updated 10 item(s) in 5 project(s); 0 error(s)" in synced.output
    one = runner.invoke(
        main, ["sync-cache", "-p", project_uuid(0), "-a", "inventory", "-n", "summary"]
    )
    assert one.exit_code == 0 and "updated 1 item(s) in 1 project(s)" in one.output
    deleted = runner.invoke(main, ["delete-cache", "-p", project_uuid(0)])
    assert deleted.exit_code == 0 and "deleted 2 item(s)" in deleted.output
    with seeded.session() as session:
        assert session.execute(sa.text("SELECT COUNT(*) FROM cache_items")).scalar() == 8
        assert (
            store.get_item(session, "inventory", "summary", project=project_uuid(1)).user == "cli"
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sync-cache", "-p", str(uuid.UUID(int=9))], "does not exist"),
        (["sync-cache", "-a", "nope"], "app_name='nope' has no cache plugin"),
        (["sync-cache", "-n", "nope"], "'nope' unknown"),
        (["delete-cache", "-p", "xyz"], "project='xyz' is not a uuid"),
    ],
)
def test_cli_unknown_project_or_app_is_one_red_line_and_changes_nothing(seeded, argv, message):
    from cachework.worker.cli import main

    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    with seeded.session() as session:
        assert session.execute(sa.text("SELECT COUNT(*) FROM cache_items")).scalar() == 0
