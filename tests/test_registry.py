"""The per-process registry, and `cachework.lookup` / `cachework.cache_status` through a real
prefork worker (both children answer from their own cached table)."""

from __future__ import annotations

import logging
import sys
import types
import uuid

import pytest
import sqlalchemy as sa

from cachework.cache.invalidation import RedisLog, Tracker
from cachework.cache.tables.registry import Registry, load_declarations
from cachework.errors import ConfigError, NotFoundError, ValidationError
from demo.models import Category
from demo.seed import seed
from tests.conftest import _database, make_env


@pytest.fixture
def seeded(sqlite_url):
    gen = _database(sqlite_url)
    database = next(gen)
    with database.session() as session:
        seed(session, projects=1, products=0)
    yield database
    next(gen, None)


@pytest.fixture
def registry(seeded):
    return Registry(load_declarations(("demo.cached_tables",)), seeded.engine)


def test_declared_tables_are_built_lazily_and_loaded_on_first_read(registry):
    assert registry.names() == ["categories"]
    assert registry.status()["categories"]["loaded"] is False
    assert registry.cursor == "0" and registry.listener == {}
    table = registry.table("categories")
    assert registry.table("categories") is table
    assert table.get(registry.coerce_key("categories", "1"))["code"] == "tools"
    status = registry.status()["categories"]
    assert status["loaded"] and status["records"] == 8 and status["hits"] == 1
    assert set(status) >= {"loaded", "records", "invalid", "hits", "misses", "refreshes"}


def test_unknown_table_and_bad_keys_are_clear_errors(registry):
    with pytest.raises(NotFoundError, match=r"'products' is not declared; .*\['categories'\]"):
        registry.table("products")
    with pytest.raises(NotFoundError):
        registry.invalidate("products", [1])
    with pytest.raises(ValidationError, match="categories id='x1' is not a valid int"):
        registry.coerce_key("categories", "x1")
    with pytest.raises(ValidationError, match="single value"):
        registry.coerce_key("categories", [1])
    registry.table("categories").get(1)
    with pytest.raises(ValidationError, match="must be a list"):
        registry.invalidate("categories", 1)


def test_invalidate_refreshes_lazily_and_is_a_noop_before_the_table_is_built(seeded, registry):
    registry.invalidate("categories", [1])  # not built in this process: nothing to do
    assert "categories" not in registry._tables
    table = registry.table("categories")
    table.get(1)
    with seeded.engine.begin() as conn:
        conn.execute(sa.update(Category).where(Category.id == 1).values(name="One"))
        conn.execute(sa.update(Category).where(Category.id == 2).values(name="Two"))
    registry.invalidate("categories", ["1"])  # keys are coerced
    assert registry.status()["categories"]["invalid"] == 1
    assert table.get(1)["name"] == "One"
    assert table.get(2)["name"] == "Garden"
    registry.invalidate("categories", None)
    assert table.get(2)["name"] == "Two"
    assert registry.status()["categories"]["refreshes"] == 2


def test_drop_all_forgets_records_until_the_next_read(seeded, registry, caplog):
    table = registry.table("categories")
    table.get(1)
    with caplog.at_level(logging.DEBUG, logger="cachework.cache.tables.registry"):
        registry.drop_all("stream trimmed past cursor 5-0")
    assert registry.status()["categories"]["loaded"] is False
    assert "stream trimmed past cursor 5-0" in caplog.text
    assert table.get(1)["code"] == "tools"
    assert registry.status()["categories"]["loads"] == 2


def test_declaration_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"'no\.such\.module'"):
        load_declarations(("no.such.module",))
    module = types.ModuleType("ct_bad_declarations")
    monkeypatch.setitem(sys.modules, "ct_bad_declarations", module)
    with pytest.raises(ConfigError, match="no CACHED_TABLES"):
        load_declarations(("ct_bad_declarations",))
    module.CACHED_TABLES = {"categories": lambda engine: None}
    with pytest.raises(ConfigError, match="declared twice"):
        load_declarations(("demo.cached_tables", "ct_bad_declarations"))
    registry = Registry(load_declarations(("ct_bad_declarations",)), sa.create_engine("sqlite://"))
    with pytest.raises(ConfigError, match="not a CachedTable"):
        registry.table("categories")


# --- through a real prefork worker ----------------------------------------------------------


def test_lookup_and_cache_status_from_both_prefork_children(
    tmp_path, seeded, redis_url, worker_process
):
    env = make_env(tmp_path, database_url=seeded.url, broker_url=redis_url)
    node, app = worker_process(env, concurrency=2)
    statuses: dict[int, dict] = {}

    def beside_busy_child(first: bool, name: str, **kwargs) -> object:
        """Run task `name` while a ping holds the other child; `first` flips which one is
        dispatched first, so the two children take `name` in turn."""
        sent = [("ping", "cachework.ping", {"hold": 0.3}), ("task", name, kwargs)]
        results = {key: app.send_task(n, kwargs=kw) for key, n, kw in sent[:: -1 if first else 1]}
        results["ping"].get(timeout=30, interval=0.05)
        return results["task"].get(timeout=30, interval=0.05)

    for attempt in range(20):
        first = attempt % 2 == 0
        record = beside_busy_child(first, "cachework.lookup", table="categories", key="2")
        assert record == {"id": 2, "code": "garden", "name": "Garden"}
        status = beside_busy_child(first, "cachework.cache_status")
        statuses[status["pid"]] = status
        loaded = [s for s in statuses.values() if s["tables"]["categories"]["loaded"]]
        if len(loaded) == 2:
            break
    assert len(statuses) == 2, f"only children {sorted(statuses)} answered"
    assert node.proc.pid not in statuses
    for pid, status in statuses.items():
        # Each child loaded and served from its own table (a lookup ran in both).
        assert status["pid"] == pid and status["cursor"] == "0" and "listener" in status
        table = status["tables"]["categories"]
        assert table["loaded"] and table["records"] == 8 and table["hits"] >= 1, status

    assert (
        app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 999}).get(
            timeout=30
        )
        is None
    )
    with pytest.raises(Exception, match="categories id='abc' is not a valid int"):
        app.send_task("cachework.lookup", kwargs={"table": "categories", "key": "abc"}).get(
            timeout=30, propagate=True
        )
    with pytest.raises(Exception, match="'nope' is not declared"):
        app.send_task("cachework.lookup", kwargs={"table": "nope", "key": 1}).get(timeout=30)


def test_a_flood_of_junk_entries_logs_a_bounded_number_of_warnings(registry, redis_url, caplog):
    """Issue 12 defect 6 with a real registry: every junk batch drops the tables, and the
    drop itself logged a warning each time, outside the tracker's rate limit."""
    import redis

    client = redis.Redis.from_url(redis_url)
    log = RedisLog(client, key=f"test:flood:{uuid.uuid4().hex[:8]}", maxlen=100_000)
    try:
        tracker = Tracker(registry, log, batch=50)
        tracker.sync()
        for _ in range(2000):
            log.append("junk")
        with caplog.at_level(logging.WARNING):
            tracker.sync()
        assert registry.listener["malformed"] == 2000 and registry.listener["drops"] >= 40
        assert len(caplog.records) <= 12, len(caplog.records)
    finally:
        client.delete(log.key, log.epoch_key)
        client.close()
