"""Prometheus metrics: a real prefork worker scraped over HTTP, the sampler's counting, the
settings, and the Grafana dashboard's metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from cachework.cache.invalidation import RedisLog, publish
from cachework.errors import ConfigError
from cachework.settings import load_settings
from cachework.worker import metrics
from tests.conftest import MODELS, make_env
from tests.invalidation_helpers import OwnRedis, free_port, wait_until

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels without pid) -> value, summed."""
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid"))
            out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


# --- a real prefork worker, scraped -----------------------------------------------------------


@pytest.fixture
def node(pg_url, tmp_path, worker_process) -> Iterator[dict]:
    yield from started_node(pg_url, tmp_path, worker_process, products=5, concurrency=2)


def started_node(
    pg_url: str, tmp_path: Path, worker_process, *, products: int, concurrency: int
) -> Iterator[dict]:
    """The demo seeded, a private Redis and a prefork node with its exporter; stopped after."""
    from cachework.worker.schema import create_tables
    from demo.seed import seed

    engine = sa.create_engine(pg_url)
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=1, products=products)
    server = OwnRedis(tmp_path / "redis").start()
    port = free_port()
    env = make_env(
        tmp_path,
        database_url=pg_url,
        broker_url=server.url,
        result_backend=server.url,
        redis_url=server.url,
        metrics_port=str(port),
    )
    try:
        worker, app = worker_process(env, concurrency=concurrency)
        yield {"app": app, "engine": engine, "port": port, "redis": server, "worker": worker}
        worker.stop()
    finally:
        server.stop()
        engine.dispose()


def _lookup(app, key: int):
    return app.send_task("cachework.lookup", kwargs={"table": "categories", "key": key})


def both_children_read(engine: sa.Engine, app, key: int) -> None:
    """Two lookups of `key` that each must read the database, one in each child: the
    categories table is locked until both wait on it (a busy child takes no second task)."""
    with engine.connect() as conn:
        conn.execute(sa.text("LOCK TABLE categories IN ACCESS EXCLUSIVE MODE"))
        pending = [_lookup(app, key), _lookup(app, key)]

        def waiting() -> bool:
            with engine.connect() as probe:
                return (
                    probe.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted "
                            "AND relation = 'categories'::regclass"
                        )
                    ).scalar_one()
                    == 2
                )

        wait_until(waiting, timeout=20, every=0.05)
        conn.rollback()
    for result in pending:
        assert result.get(timeout=30)["id"] == key


def _expected_samples(result: dict, categories: int, lookups: int) -> dict:
    """The samples the scrape must show, summed over both children: `lookups` lookups, two
    refreshes, 4 applied and 2 ignored invalidations, the import `result`'s row counts."""
    expected = {
        ("cachework_cached_table_hits_total", (("table", "categories"),)): lookups,
        ("cachework_cached_table_misses_total", (("table", "categories"),)): 0,
        ("cachework_cached_table_source_reads_total", (("table", "categories"),)): 0,
        ("cachework_cached_table_refreshes_total", (("table", "categories"),)): 2,
        ("cachework_cached_table_records", (("table", "categories"),)): 2 * categories,
        ("cachework_cached_table_invalid", (("table", "categories"),)): 0,
        ("cachework_invalidation_events_total", (("outcome", "applied"),)): 4,
        ("cachework_invalidation_events_total", (("outcome", "ignored"),)): 2,
        ("cachework_invalidation_drops_total", ()): 0,
        ("cachework_invalidation_lag_seconds_count", ()): 4 + 2,
        ("cachework_invalidation_listener_connected", ()): 2,
        ("cachework_tasks_total", (("outcome", "SUCCESS"), ("task", "cachework.lookup"))): lookups,
        ("cachework_task_duration_seconds_count", (("task", "cachework.lookup"),)): lookups,
        ("cachework_import_duration_seconds_count", (("outcome", "SUCCESS"),)): 1,
    }
    for model, counts in result["models"].items():
        for operation in ("created", "updated", "deleted", "unchanged"):
            key = (("model", model), ("operation", operation))
            expected[("cachework_import_rows_total", key)] = counts[operation]
    return expected


def _mismatch_after_settling(port: int, expected: dict, timeout: float = 15) -> dict:
    """The samples still differing from `expected` (scraped, expected) after up to
    `timeout` seconds of scraping (children report a little after their tasks return)."""

    def matches() -> dict:
        found = samples(scrape(port)[1])
        wrong = {k: (found.get(k, 0.0), v) for k, v in expected.items() if found.get(k, 0) != v}
        return wrong

    deadline = time.monotonic() + timeout
    wrong = matches()
    while wrong and time.monotonic() < deadline:
        time.sleep(0.2)
        wrong = matches()
    return wrong


def test_scrape_of_a_prefork_worker_sums_both_children_exactly(node):
    app, engine, port = node["app"], node["engine"], node["port"]
    with engine.connect() as conn:
        categories = conn.execute(sa.text("SELECT count(*) FROM categories")).scalar_one()
    # Both children load the table (a read each), then 6 more reads, wherever they run.
    both_children_read(engine, app, 1)
    for key in (1, 2, 3, 1, 2, 3):
        assert _lookup(app, key).get(timeout=30)["id"] == key
    # Three invalidations: two of a cached table (applied by both children), one of a
    # table no child caches (ignored by both).
    client = redis.Redis.from_url(node["redis"].url)
    log = RedisLog(client)
    publish("categories", [2], log=log)
    publish("categories", [2], log=log)
    publish("products", [1], log=log)

    def applied() -> bool:
        found = samples(scrape(port)[1])
        return value(found, "cachework_invalidation_events_total", outcome="applied") >= 4

    wait_until(applied, timeout=15, every=0.2)
    # Each child refreshes key 2 once (one refresh takes both pending invalidations).
    both_children_read(engine, app, 2)
    # An import: the seed wrote no versions, so every row gets its first one.
    result = app.send_task("cachework.import_versions", kwargs={"user": "metrics"}).get(timeout=60)
    assert result["models"]["Product"]["created"] == 5, result
    assert result["models"]["Category"]["created"] == categories, result

    lookups = 2 + 6 + 2
    expected = _expected_samples(result, categories, lookups)
    wrong = _mismatch_after_settling(port, expected)
    assert not wrong, f"(scraped, expected): {wrong}"
    client.close()
    status, body = scrape(port, "/ready")
    assert (status, body.strip()) == (200, "ok")
    assert scrape(port, "/live")[0] == 200
    text = scrape(port)[1]
    names = {f.name for f in text_string_to_metric_families(text)}
    assert all(n.startswith("cachework_") for n in names), names


# --- counting in one process ----------------------------------------------------------------


@pytest.fixture
def fresh_metrics() -> Iterator[None]:
    """This process's metrics start from zero, and nothing is left exporting after."""
    metrics.disable_multiprocess()
    yield
    metrics.disable_multiprocess()


class _Registry:
    def __init__(self, tables: dict) -> None:
        self.tables = tables
        self.listener: dict = {}

    def status(self) -> dict:
        return {name: table.stats() for name, table in self.tables.items()}


class _Runtime:
    def __init__(self, registry: _Registry) -> None:
        self._registry = registry
        self._tracker = None
        self.listening = False


def test_every_read_counts_one_hit_or_one_miss_and_the_sampler_copies_them(
    sqlite_url, fresh_metrics
):
    from cachework.cache.tables.source import SelectSource
    from cachework.cache.tables.table import CachedTable
    from tests.cached_table_helpers import INDEXES, items, make_engine

    engine = make_engine(sqlite_url)
    table = CachedTable(INDEXES, SelectSource(engine, sa.select(items)), autoload=False)
    table.load("grp", 1)  # ids 1, 4, 7, ...
    reads = [
        lambda: table.get(1),  # covered: hit
        lambda: table.get(2),  # not covered: miss
        lambda: table.get_records("grp", 1),  # hit
        lambda: table.get_records("grp", 2),  # miss
        lambda: table.get_records("code", "c4"),  # stored by a unique key: hit
        lambda: table.get_records("code", "c5"),  # miss
        lambda: table.get_records("score", ge=0, lt=50),  # a range beyond coverage: miss
    ]
    whole = CachedTable(INDEXES, SelectSource(engine, sa.select(items)), name="whole")
    absent = [  # the whole table is loaded: memory knows these are absent, still misses
        lambda: whole.get(10**6),
        lambda: whole.get_records("code", "nothing"),
        lambda: whole.get_records("score", ge=10**6, lt=10**7),
    ]
    sampler = metrics.Sampler(_Runtime(_Registry({"items": table, "whole": whole})))
    sampler.sync()  # every counter is exported from the first copy, before it moves
    found = samples(metrics.exposition(metrics.metrics().registry).decode())
    for counter in ("hits", "misses", "source_reads", "refreshes"):
        assert (f"cachework_cached_table_{counter}_total", (("table", "whole"),)) in found
    for count, read in enumerate(reads * 3, start=1):
        read()
        stats = table.stats()
        assert stats["hits"] + stats["misses"] == count
    for read in absent:
        assert not read()
    whole.get(1)
    table.invalidate_keys([1])
    table.get(1)  # refreshes first
    sampler.sync()
    sampler.sync()  # copying twice adds nothing
    found = samples(metrics.exposition(metrics.metrics().registry).decode())
    assert value(found, "cachework_cached_table_hits_total", table="items") == 3 * 3 + 1
    assert value(found, "cachework_cached_table_misses_total", table="items") == 4 * 3
    assert value(found, "cachework_cached_table_source_reads_total", table="items") == 4 * 3
    assert value(found, "cachework_cached_table_refreshes_total", table="items") == 1
    assert value(found, "cachework_cached_table_hits_total", table="whole") == 1
    assert value(found, "cachework_cached_table_misses_total", table="whole") == len(absent)
    assert value(found, "cachework_cached_table_source_reads_total", table="whole") == 0
    assert value(found, "cachework_cached_table_records", table="items") == len(
        table.storage.records
    )
    engine.dispose()


def test_a_web_process_serves_its_runtime_metrics_and_readiness(runtime, fresh_metrics):
    from cachework.worker.schema import create_tables

    create_tables(runtime.database.engine, MODELS)
    with runtime.database.session() as session:
        from demo.seed import seed

        seed(session, projects=1, products=2)
    runtime.start()
    server = metrics.start_http_server(runtime, port=0)
    try:
        categories = runtime.registry.table("categories")
        for key in (1, 2, 3, 1):
            assert categories.get(key)["id"] == key
        status, text = scrape(server.port)
        assert status == 200
        found = samples(text)
        assert value(found, "cachework_cached_table_hits_total", table="categories") == 4
        assert value(found, "cachework_invalidation_listener_connected") == 1
        assert scrape(server.port, "/ready") == (200, "ok\n")
        assert scrape(server.port, "/nothing")[0] == 404
    finally:
        server.stop()
        runtime.stop()


def test_rebuild_and_import_reports(fresh_metrics):
    metrics.record_rebuild("inventory", 0.5, ["inventory failed for project p: boom"])
    metrics.record_rebuild("inventory", 0.1)
    metrics.record_lock_wait("inventory")
    metrics.record_deferral("inventory")
    metrics.record_import({"dry_run": True, "models": {"Product": {"created": 9}}}, 1.0)
    metrics.record_import({"dry_run": False, "models": {"Product": {"created": 2}}}, 1.0)
    found = samples(metrics.exposition(metrics.metrics().registry).decode())
    assert value(found, "cachework_rebuilds_total", app="inventory") == 2
    assert value(found, "cachework_rebuild_plugin_errors_total", app="inventory") == 1
    assert value(found, "cachework_rebuild_lock_waits_total", app="inventory") == 1
    # exported at 0 from an app's first round: rate() sees the first error of "other"
    metrics.record_rebuild("other", 0.1)
    found = samples(metrics.exposition(metrics.metrics().registry).decode())
    for name in ("plugin_errors", "lock_waits", "deferrals"):
        assert (f"cachework_rebuild_{name}_total", (("app", "other"),)) in found, name
    assert value(found, "cachework_rebuild_deferrals_total", app="inventory") == 1
    assert value(found, "cachework_rebuild_duration_seconds_count", app="inventory") == 2
    assert value(found, "cachework_import_rows_total", model="Product", operation="created") == 2
    deleted = ("cachework_import_rows_total", (("model", "Product"), ("operation", "deleted")))
    assert found[deleted] == 0  # every operation of a model imported is exported
    assert value(found, "cachework_import_duration_seconds_count", outcome="SUCCESS") == 2


def test_a_failure_on_bad_input_is_counted_as_rejected(fresh_metrics):
    """The outcome of a task that failed: REJECTED for the caller's input (as noted by the
    task's `on_failure` right before the worker counts it), FAILURE for anything else."""
    from cachework.errors import NotFoundError, TooLargeError, TransientError, ValidationError
    from cachework.instruments import forget_failure, note_failure

    for error in (ValidationError("x"), TooLargeError("x"), NotFoundError("x")):
        assert metrics.task_outcome("FAILURE", error) == metrics.REJECTED, error
    for error in (ConfigError("x"), TransientError("x"), RuntimeError("x"), None):
        assert metrics.task_outcome("FAILURE", error) == "FAILURE", error
    assert metrics.task_outcome("RETRY", ValidationError("x")) == "RETRY"
    note_failure("cachework.lookup", ValidationError("bad key"))
    metrics.record_task("cachework.lookup", "FAILURE", 0.1)
    metrics.record_task("cachework.other", "FAILURE", 0.1)  # not the task noted
    note_failure("cachework.import_versions", ValidationError("bad model"))
    metrics.record_task("cachework.import_versions", "FAILURE", 0.1)
    metrics.record_import(None, 0.1, "FAILURE")
    note_failure("cachework.lookup", RuntimeError("a bug"))
    metrics.record_task("cachework.lookup", "FAILURE", 0.1)
    note_failure("cachework.lookup", ValidationError("bad key"))
    forget_failure()  # the next task started: the note was not its own
    metrics.record_task("cachework.lookup", "FAILURE", 0.1)
    found = samples(metrics.exposition(metrics.metrics().registry).decode())
    tasks = {
        (dict(labels)["task"], dict(labels)["outcome"]): v
        for (name, labels), v in found.items()
        if name == "cachework_tasks_total"
    }
    assert tasks == {
        ("cachework.lookup", "REJECTED"): 1,
        ("cachework.lookup", "FAILURE"): 2,
        ("cachework.other", "FAILURE"): 1,
        ("cachework.import_versions", "REJECTED"): 1,
    }
    assert value(found, "cachework_import_duration_seconds_count", outcome="REJECTED") == 1


def test_the_lag_uses_the_log_s_publish_time_else_the_id_s(fresh_metrics):
    """Entries of the tracker's `recent`: (id, applied at, published at or None)."""

    class Tracker:
        recent = [
            ("41", 100.0, None),  # a database log id with no time given: no lag
            ("42", 100.5, 100.25),  # the database log on PostgreSQL: 0.25 s
            ("1700000000000-0", 1700000000.5, None),  # a Redis Stream id: 0.5 s
        ]

    runtime = _Runtime(_Registry({}))
    runtime._tracker = Tracker()
    sampler = metrics.Sampler(runtime)
    sampler._observe_lag(metrics.metrics(), Tracker.recent)
    sampler._observe_lag(metrics.metrics(), Tracker.recent)  # seen already: not again
    found = samples(metrics.exposition(metrics.metrics().registry).decode())
    assert value(found, "cachework_invalidation_lag_seconds_count") == 2
    assert value(found, "cachework_invalidation_lag_seconds_sum") == pytest.approx(0.75)


def test_publish_time_comes_from_redis_stream_ids_only():
    assert metrics.publish_time("1700000000123-4") == 1700000000.123
    assert metrics.publish_time("4294967297") is None


# --- settings and the dashboard ---------------------------------------------------------------


def test_metrics_settings(tmp_path):
    assert load_settings({}).metrics_port is None
    assert load_settings({"CACHEWORK_METRICS_PORT": "off"}).metrics_port is None
    settings = load_settings({"CACHEWORK_METRICS_PORT": "9808"})
    assert (settings.metrics_port, settings.metrics_bind) == (9808, "127.0.0.1")
    assert load_settings({"CACHEWORK_METRICS_BIND": "0.0.0.0"}).metrics_bind == "0.0.0.0"
    for bad in ("http", "-1", "70000"):
        with pytest.raises(ConfigError, match=f"CACHEWORK_METRICS_PORT='{bad}'"):
            load_settings({"CACHEWORK_METRICS_PORT": bad})
    with pytest.raises(ConfigError, match="CACHEWORK_METRICS_BIND='a b'"):
        load_settings({"CACHEWORK_METRICS_BIND": "a b"})


def exposed_names() -> set[str]:
    """Every sample name cachework's metrics can expose."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for family in metrics.Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_every_metric_the_grafana_dashboard_charts_exists():
    dashboard = json.loads(DASHBOARD.read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcachework_[a-z_]+", target["expr"])
    }
    exposed = exposed_names()
    assert charted, "the dashboard charts nothing"
    assert charted <= exposed, sorted(charted - exposed)
    families = {n.removesuffix("_total").removesuffix("_bucket") for n in charted}
    for required in ("cachework_cached_table_hits", "cachework_invalidation_lag_seconds",
                     "cachework_import_rows", "cachework_rebuild_plugin_errors",
                     "cachework_tasks"):  # fmt: skip
        assert required in families, required


def test_observe_many_counts_as_observing_one_by_one():
    """The sampler adds a second's lags in one increment per bucket: the same samples as
    one observe() each, boundaries (a value equal to a bucket's bound) included."""
    from prometheus_client import CollectorRegistry, Histogram

    amounts = [0.0, 0.001, 0.005, 0.0051, 0.05, 0.25, 1.0, 7.5, 100.0, 0.005]
    samples = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("lag", "lag", buckets=(0.005, 0.05, 0.25, 1.0), registry=registry)
        if bulk:
            metrics.observe_many(histogram, amounts)
        else:
            for amount in amounts:
                histogram.observe(amount)
        (family,) = registry.collect()
        kept = [s for s in family.samples if not s.name.endswith("_created")]
        samples.append([(s.name, s.labels, s.value) for s in kept])
    assert samples[0] == samples[1]
    assert ("lag_count", {}, float(len(amounts))) in samples[1]
