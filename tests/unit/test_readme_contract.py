"""The README's task table is the tasks' contract, and it says what they do (issue 22,
item 8): every `cachework.*` task registered on a worker's app has a row; each row's
arguments are the task's own (names, and defaults as written); and each row's result
names every key that the task's real result carries, and no other.

The results are real: each task runs eagerly (`apply`) on the embedded default (SQLite
in a temporary folder, a database log, no Redis) after a small seed.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachework.worker import create_app, routing
from cachework.worker.schema import create_tables
from demo.seed import project_uuid, seed
from tests.conftest import MODELS, make_env

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Enqueueing from a web app"
PROJECT = project_uuid(0)
# One call per task, whose result shows every key the task's results carry.
CALLS: dict[str, dict[str, Any]] = {
    routing.IMPORT_VERSIONS: {"user": "alice"},
    routing.SYNC_CACHE: {"project": PROJECT},
    routing.SYNC_PROJECT_CACHE: {"project": PROJECT},
    routing.REBUILD_CHANGED: {"project": PROJECT, "app_name": "inventory", "names": ["summary"]},
    routing.SYNC_CACHE_SUMMARY: {"results": [{"updated": 2, "projects": 1, "errors": []}]},
    routing.DELETE_CACHE: {"project": project_uuid(1)},
    routing.PROCESS_INVALIDATION: {"table": "categories", "keys": [1]},
    routing.LOOKUP: {"table": "categories", "key": 1},
    routing.CACHE_STATUS: {},
    routing.PING: {},
    routing.INVALIDATION_PROBE: {},
}
# Keys that are names, not fields (a model, a cached table): the README writes NAME/TABLE.
NAMED = {
    routing.IMPORT_VERSIONS: {("models",), ("inconsistent",)},
    routing.CACHE_STATUS: {("tables",)},
}
# A record: its keys are the cached table's columns, not the contract's.
RECORDS = {routing.LOOKUP}


def readme() -> str:
    return (ROOT / "README.md").read_text()


def task_table(text: str) -> dict[str, tuple[str, str]]:
    """The rows of the first table under SECTION: task name -> (arguments, result)."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3:
            continue
        name = re.fullmatch(r"`(cachework\.\w+)`.*", cells[0])
        if name:
            rows[name.group(1)] = (cells[1], cells[2])
    return rows


def documented_arguments(cell: str) -> dict[str, object]:
    """`table, keys=None, hold=0.0` -> {"table": REQUIRED, "keys": None, "hold": 0.0}."""
    cell = cell.strip("`").strip()
    if cell.lower() in ("none", ""):
        return {}
    out: dict[str, object] = {}
    for part in re.split(r",\s*(?![^\[]*\])", cell.replace("`", "")):
        name, eq, default = part.strip().partition("=")
        out[name.strip()] = ast.literal_eval(default.strip()) if eq else inspect.Parameter.empty
    return out


def documented_keys(cell: str) -> set[str]:
    """Every quoted word of a result cell: the keys it lists."""
    return set(re.findall(r'"(\w+)"', cell))


def result_keys(value: Any, named: set[tuple[str, ...]], path: tuple[str, ...] = ()) -> set:
    """Every key of a JSON result at any depth; under a `named` path the keys are names
    (a model, a table), so their values' keys count, not theirs."""
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if path in named:
                keys |= result_keys(item, named, (*path, "*"))
            else:
                keys.add(key)
                keys |= result_keys(item, named, (*path, key))
    elif isinstance(value, list):
        for item in value:
            keys |= result_keys(item, named, path)
    return keys


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A worker's app on the embedded default, its tasks imported, a small seed."""
    app = create_app_for(tmp_path_factory.mktemp("contract"))
    try:
        yield app
    finally:
        app.runtime.close()
        app.close()


def create_app_for(folder: Path) -> Any:
    from cachework.settings import load_settings

    app = create_app(load_settings(make_env(folder)))
    app.loader.import_default_modules()
    create_tables(app.runtime.database.engine, MODELS)
    with app.runtime.database.session() as session:
        seed(session, projects=2, products=3)
    return app


@pytest.fixture(scope="module")
def results(app: Any) -> dict[str, Any]:
    """Each task's real result, run eagerly in order (the import first: its versions)."""
    out = {}
    for name, kwargs in CALLS.items():
        done = app.tasks[name].apply(kwargs=kwargs)
        assert done.successful(), (name, done.result)
        out[name] = done.result
    return out


def registered(app: Any) -> list[str]:
    return sorted(n for n in app.tasks if n.startswith(routing.PREFIX))


def test_every_registered_task_has_a_row_and_every_row_a_task(app):
    rows = task_table(readme())
    assert sorted(rows) == registered(app), "README task table vs registered tasks"
    assert set(CALLS) == set(registered(app)), "a new task: add its call to CALLS"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_rows_arguments_are_the_tasks(app, name):
    rows = task_table(readme())
    assert name in rows, f"{name} has no row in the README's task table"
    parameters = inspect.signature(app.tasks[name].run).parameters
    taken = {p.name: p.default for p in parameters.values()}
    assert documented_arguments(rows[name][0]) == taken, rows[name][0]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_rows_result_lists_the_keys_its_result_carries(results, name):
    rows = task_table(readme())
    assert name in rows, f"{name} has no row in the README's task table"
    if name in RECORDS:
        assert results[name] is not None and "record" in rows[name][1]
        return
    carried = result_keys(results[name], NAMED.get(name, set()))
    assert documented_keys(rows[name][1]) == carried, rows[name][1]


def test_one_sync_of_all_projects_is_told_as_its_tasks():
    """The README says how many tasks a sync of all projects is: one per project, one for
    the site-wide items, the summary, and the sync itself (3 projects: 6 tasks)."""
    assert "3 projects is 6 tasks" in " ".join(readme().split())


def test_the_import_logger_is_named():
    import cachework.tasks.versions

    assert f"`{cachework.tasks.versions.log.name}`" in readme()


def test_catching_errors_by_type_is_documented():
    text = " ".join(readme().split())
    assert "import cachework.errors" in text
    assert "except cachework.errors." in text


def test_the_guides_are_linked():
    text = readme()
    for guide in ("docs/plugins.md", "docs/cached-tables.md"):
        assert f"]({guide})" in text, guide
        assert (ROOT / guide).is_file(), guide
