"""The Grafana dashboard against a REAL worker (issue 22, item 5): after some traffic (a
lookup that finds its record, one of an absent key, bad input, an import, a rebuild, an
invalidation), a scrape of the node's /metrics has every metric and every label the
dashboard's queries use; the absent key moved `misses_total`; bad input is counted as
REJECTED, never FAILURE; every query is scoped by the `job` and `instance` variables.

The PromQL of docs/grafana-dashboard.json is read for metric selectors, their label
matchers and the `by`/`without` labels of each aggregation (applied to the metrics inside
its argument). `job` and `instance` are the labels Prometheus attaches to every series it
scrapes, so the exporter does not carry them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import states

from cachework.cache.invalidation import RedisLog, publish
from cachework.worker.metrics import REJECTED
from tests.test_metrics import samples, scrape, started_node

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
TARGET_LABELS = frozenset({"job", "instance"})  # attached by Prometheus at scrape time
SCOPE = {"job": ("=~", "$job"), "instance": ("=~", "$instance")}
TASK_OUTCOMES = frozenset(states.ALL_STATES) | {REJECTED}  # what `outcome` can say
SELECTOR = re.compile(r"\b(cachework_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LOOKUP = "cachework.lookup"
ABSENT_KEY = 10**9


# --- the dashboard's PromQL ------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(board: dict) -> list[str]:
    """Every panel target's expression."""
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (operator, value)}) of each metric selector in `expr`."""
    found = []
    for match in SELECTOR.finditer(expr):
        body = match.group(2) or "{}"
        matchers = {m.group(1): (m.group(2), m.group(3)) for m in MATCHER.finditer(body)}
        leftover = MATCHER.sub("", body[1:-1]).replace(",", "").strip()
        assert not leftover, f"unparsed matcher {leftover!r} in {expr!r}"
        found.append((match.group(1), matchers))
    return found


def _closing(expr: str, start: int) -> int:
    """The index of the parenthesis closing the one at `start`."""
    depth = 0
    for index in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[index], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def _opening(expr: str, end: int) -> int:
    """The index of the parenthesis opening the one closing at `end`."""
    depth = 0
    for index in range(end, -1, -1):
        depth += {")": 1, "(": -1}.get(expr[index], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def groupings(expr: str) -> list[tuple[set[str], set[str]]]:
    """(labels, metrics) of each `by (...)` or `without (...)` clause in `expr`: the labels
    it names and the metrics of the aggregation's argument, written after the clause
    (`sum by (x) (...)`) or before it (`sum(...) by (x)`)."""
    found = []
    for match in GROUPING.finditer(expr):
        labels = {label.strip() for label in match.group(1).split(",") if label.strip()}
        after = expr[match.end() :].lstrip()
        if after.startswith("("):
            start = match.end() + expr[match.end() :].index("(")
            argument = expr[start : _closing(expr, start) + 1]
        else:
            end = expr[: match.start()].rstrip()
            assert end.endswith(")"), f"no argument for {match.group(0)!r} in {expr!r}"
            argument = expr[_opening(expr, len(end) - 1) : len(end)]
        metrics = {name for name, _ in selectors(argument)}
        assert metrics, f"{match.group(0)!r} aggregates no metric in {expr!r}"
        found.append((labels, metrics))
    return found


def used(board: dict) -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """The dashboard's use of the metrics: metric -> labels its queries use (matchers and
    groupings), and (metric, label) -> the literal values they match with `=`."""
    labels: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for expr in queries(board):
        for name, matchers in selectors(expr):
            labels.setdefault(name, set()).update(matchers)
            for label, (operator, text) in matchers.items():
                if operator == "=" and "$" not in text:
                    values.setdefault((name, label), set()).add(text)
        for grouped, names in groupings(expr):
            for name in names:
                labels.setdefault(name, set()).update(grouped)
    return labels, values


def test_the_dashboard_s_promql_is_read_as_written():
    """The reader itself, on the query shapes the dashboard uses."""
    expr = (
        'histogram_quantile(0.95, sum by (le, app) (rate(cachework_a_bucket{x="1", '
        'job=~"$job"}[5m]))) / sum(rate(cachework_b_total[1h])) by (task)'
    )
    assert selectors(expr) == [
        ("cachework_a_bucket", {"x": ("=", "1"), "job": ("=~", "$job")}),
        ("cachework_b_total", {}),
    ]
    assert groupings(expr) == [
        ({"le", "app"}, {"cachework_a_bucket"}),
        ({"task"}, {"cachework_b_total"}),
    ]


def test_every_query_is_scoped_by_the_job_and_instance_variables():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for name in ("job", "instance"):
        variable = variables[name]
        assert variable["type"] == "query", variable
        assert variable["datasource"]["uid"] == "${datasource}", variable
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        assert re.fullmatch(rf"label_values\(.*cachework_.*,\s*{name}\)", query), query
    assert "$job" in variables["instance"]["query"]["query"]  # instances of the chosen jobs
    exprs = queries(board)
    assert exprs, "the dashboard charts nothing"
    for expr in exprs:
        for name, matchers in selectors(expr):
            scope = {k: matchers.get(k) for k in SCOPE}
            assert scope == SCOPE, f"{name} in {expr!r} is not scoped by $job and $instance"


# --- a real worker, scraped -------------------------------------------------------------------


@pytest.fixture
def node(pg_url, tmp_path, worker_process) -> Iterator[dict]:
    """A prefork worker node of one child (reads counted exactly) with its exporter."""
    yield from started_node(pg_url, tmp_path, worker_process, products=3, concurrency=1)


def exported(text: str) -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """From a scrape: sample name -> its label names, and (name, label) -> its values."""
    from prometheus_client.parser import text_string_to_metric_families

    labels: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            for label, text_value in sample.labels.items():
                values.setdefault((sample.name, label), set()).add(text_value)
    return labels, values


def settled(port: int, expected: dict[tuple[str, tuple], float | None]) -> dict:
    """The scrape once every sample of `expected` ((name, sorted labels) -> value, an
    absent sample reading None) reads its value: a child records a task and copies its
    tables' counts right after the task, which the client may see end a moment before."""
    deadline = time.monotonic() + 20
    while True:
        found = samples(scrape(port)[1])
        seen = {key: found.get(key) for key in expected}
        if seen == expected:
            return found
        assert time.monotonic() < deadline, f"scraped {seen}, expected {expected}"
        time.sleep(0.1)


def _table(counter: str) -> tuple[str, tuple]:
    return (f"cachework_cached_table_{counter}_total", (("table", "categories"),))


def _lookups(outcome: str) -> tuple[str, tuple]:
    return ("cachework_tasks_total", (("outcome", outcome), ("task", LOOKUP)))


def test_a_worker_exports_every_metric_and_label_the_dashboard_queries(node):
    app, port = node["app"], node["port"]

    def lookup(**kwargs):
        return app.send_task(LOOKUP, kwargs=kwargs)

    # A lookup that finds its record (the first read loads the table): a good task.
    assert lookup(table="categories", key=1).get(timeout=60)["id"] == 1
    # misses exported (at 0) before it ever moved: the hit ratio has its denominator.
    counts = {_table("hits"): 1, _table("misses"): 0, _table("source_reads"): 0}
    settled(port, {**counts, _lookups("SUCCESS"): 1})

    # A lookup of an absent key: memory answers (the whole table is loaded), as a miss;
    # no database read for it.
    assert lookup(table="categories", key=ABSENT_KEY).get(timeout=60) is None
    counts[_table("misses")] = 1
    settled(port, {**counts, _lookups("SUCCESS"): 2})

    # Bad input: refused before the task runs (an unknown argument), by the task (a table
    # name that is not a string), and a name that does not exist.
    bad = [
        {"table": "categories", "key": 1, "colour": "red"},
        {"table": 5, "key": 1},
        {"table": "no_such_table", "key": 1},
    ]
    for kwargs in bad:
        result = lookup(**kwargs)
        result.get(timeout=60, propagate=False)
        assert result.state == states.FAILURE, kwargs  # what the client sees is unchanged
    # counted apart, never as FAILURE; bad input reads nothing
    settled(port, {**counts, _lookups(REJECTED): len(bad), _lookups(states.FAILURE): None})

    _rest_of_the_traffic(app, node["redis"].url, port)
    text = scrape(port)[1]
    _assert_the_dashboard_is_served(text)


def _rest_of_the_traffic(app, redis_url: str, port: int) -> None:
    """An import, a rebuild and an invalidation of the cached table: the metrics of the
    dashboard's other panels."""
    from demo.seed import project_uuid

    imported = app.send_task("cachework.import_versions", kwargs={"user": "metrics"})
    assert imported.get(timeout=60)["models"], "the import saw no model"
    synced = app.send_task(
        "cachework.sync_project_cache", kwargs={"project": project_uuid(0), "app_name": "inventory"}
    )
    assert synced.get(timeout=60)["errors"] == []
    client = redis.Redis.from_url(redis_url)
    try:
        publish("categories", [1], log=RedisLog(client))
    finally:
        client.close()
    settled(port, {("cachework_invalidation_events_total", (("outcome", "applied"),)): 1})


def _assert_the_dashboard_is_served(text: str) -> None:
    names, values = exported(text)
    wanted, literals = used(dashboard())
    assert wanted, "the dashboard queries nothing"
    missing = sorted(set(wanted) - set(names))
    assert not missing, f"queried by the dashboard, not exported: {missing}"
    for name, labels in sorted(wanted.items()):
        absent = labels - names[name] - TARGET_LABELS
        assert not absent, f"{name}: the dashboard uses labels {sorted(absent)} it does not carry"
    for (name, label), texts in sorted(literals.items()):
        possible = values.get((name, label), set())
        if (name, label) == ("cachework_tasks_total", "outcome"):
            possible = possible | TASK_OUTCOMES  # a FAILURE panel is right before any failure
        assert texts <= possible, f"{name}{{{label}}}: {sorted(texts - possible)} never exported"
    assert REJECTED in values[("cachework_tasks_total", "outcome")]
