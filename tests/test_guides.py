"""The guides' examples run as printed (issue 22, item 4).

Each guide (docs/plugins.md, docs/cached-tables.md) prints ONE complete module in its one
```python block. The test takes that block out of the .md file, writes it as the module
the guide names (`myapp/models.py`, `myshop/cached_tables.py`) under tmp_path, points a
runtime's settings at it as the guide's configuration line says, and runs a real rebuild
or real reads against PostgreSQL. Nothing of the block is edited.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

from cachework.cache.invalidation import track
from cachework.cache.invalidation.dependencies import Dependency, dependencies
from cachework.cache.items import store
from cachework.worker import jobs
from cachework.worker.runtime import Runtime
from cachework.worker.schema import create_tables
from tests.conftest import MODELS, make_env, settings_of

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def example(guide: str) -> str:
    """The guide's one ```python block, exactly as printed."""
    blocks = BLOCK.findall((DOCS / guide).read_text())
    assert len(blocks) == 1, f"{guide} must print exactly one python block, has {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each guide's block written as the module it names (`myapp/models.py`,
    `myshop/cached_tables.py`), on sys.path for this test module; both packages are
    forgotten afterwards. Once per module: a model module is mapped once per process."""
    folder = tmp_path_factory.mktemp("guides")
    for dotted, guide in (
        ("myapp.models", "plugins.md"),
        ("myshop.cached_tables", "cached-tables.md"),
    ):
        package, _, name = dotted.partition(".")
        (folder / package).mkdir()
        (folder / package / "__init__.py").write_text("")
        (folder / package / f"{name}.py").write_text(example(guide))
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.split(".")[0] in ("myapp", "myshop")]:
            del sys.modules[name]


# --- docs/plugins.md ----------------------------------------------------------------------


@pytest.fixture
def notes(tmp_path: Path, pg_url: str, examples) -> Iterator[tuple[Runtime, ModuleType]]:
    """A runtime configured as the plugin guide says, its tables made, two teams."""
    env = make_env(
        tmp_path,
        database_url=pg_url,
        redis_url="off",
        models="myapp.models",
        projects="teams.slug:text",
        cached_tables="off",
    )
    runtime = Runtime(settings_of(env))
    try:
        create_tables(runtime.database.engine, runtime.models)
        [models] = runtime.models.modules
        with runtime.database.session() as session:
            session.add_all(
                [
                    models.Team(slug="alpha", title="Alpha team"),
                    models.Team(slug="beta", title="Beta team"),
                ]
            )
            session.flush()  # no relationship(): the teams go first by hand
            session.add_all(
                [
                    models.Note(team_slug="alpha", tag="idea", words=120),
                    models.Note(team_slug="alpha", tag="idea", words=30),
                    models.Note(team_slug="alpha", tag="todo", words=8),
                    models.Note(team_slug="beta", tag="todo", words=5),
                ]
            )
        yield runtime, models
    finally:
        runtime.close()


def item(runtime: Runtime, name: str, project: str | None) -> object:
    with runtime.database.session() as session:
        found = store.get_item(session, "notes", name, project=project)
    return None if found is None else found.data


def test_the_plugin_guide_example_is_found_and_rebuilds_every_scope(notes):
    runtime, models = notes
    assert list(runtime.plugins) == ["notes"]  # through CACHE_PLUGINS in the model module
    assert type(runtime.plugins["notes"]) is models.NotesPlugin
    result = jobs.rebuild_items(runtime, None, "notes", None)  # every team and site-wide
    assert result == {"updated": 5, "projects": 2, "errors": [], "deferred": 0}
    assert item(runtime, "stats", "alpha") == {"title": "Alpha team", "notes": 3, "words": 158}
    assert item(runtime, "tags", "alpha") == {"idea": 2, "todo": 1}
    assert item(runtime, "stats", "beta") == {"title": "Beta team", "notes": 1, "words": 5}
    assert item(runtime, "totals", None) == {"teams": 2, "notes": 4}
    assert item(runtime, "totals", "alpha") is None  # site-wide items are their own


def test_the_plugin_guide_examples_reads_map_a_note_to_its_team(notes):
    """The guide's `depends_on` is checked against its models, and a note's change leads
    to its team's `stats` and `tags` and to the site-wide `totals`; a team's, to its
    `stats` and `totals`."""
    from cachework.cache.invalidation.events import Event

    runtime, _models = notes
    reads = runtime.item_reads
    assert sorted(reads.routes) == [
        "@items:notes",
        "@items:notes.team_slug",
        "@items:teams",
        "@items:teams.slug",
    ]
    with runtime.database.session() as session:
        note = reads.scopes(session, [Event("@items:notes.team_slug", ("beta",))])
        note |= reads.scopes(session, [Event("@items:notes")])
        team = reads.scopes(session, [Event("@items:teams.slug", ("alpha",))])
        team |= reads.scopes(session, [Event("@items:teams")])
    assert note == {
        ("beta", "notes", "stats"),
        ("beta", "notes", "tags"),
        (None, "notes", "totals"),
    }
    assert team == {("alpha", "notes", "stats"), (None, "notes", "totals")}


def test_the_plugin_guide_example_rebuilds_one_name_and_reports_its_failure(notes):
    runtime, models = notes
    jobs.rebuild_items(runtime, "beta", "notes", None)
    with runtime.database.session() as session:
        session.add(models.Note(team_slug="beta", tag="draft", words=None))
        session.add(models.Note(team_slug="alpha", tag="draft", words=2))
    # One item of one team, as `cachework sync-cache -p alpha -a notes -n tags` asks.
    assert jobs.rebuild_items(runtime, "alpha", "notes", ["tags"])["updated"] == 1
    assert item(runtime, "tags", "alpha") == {"draft": 1, "idea": 2, "todo": 1}
    # A plugin that raises: reported in `errors`, nothing of that call written.
    result = jobs.rebuild_items(runtime, "beta", "notes", None)
    assert result["updated"] == 0 and result["projects"] == 1, result
    [error] = result["errors"]
    assert error.startswith("notes failed for project beta: ValueError: notes [")
    assert item(runtime, "stats", "beta") == {"title": "Beta team", "notes": 1, "words": 5}
    assert item(runtime, "tags", "beta") == {"todo": 1}  # the same call set it: not written


# --- docs/cached-tables.md ----------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path, pg_url: str, examples) -> Iterator[tuple[Runtime, ModuleType]]:
    """A started runtime configured as the cached-table guide says, the shop's tables
    made and filled (without tracking: the reads load them)."""
    env = make_env(
        tmp_path, database_url=pg_url, redis_url="off", cached_tables="myshop.cached_tables"
    )
    runtime = Runtime(settings_of(env))
    try:
        create_tables(runtime.database.engine, MODELS)  # ours (and the example app's)
        shop = importlib.import_module("myshop.cached_tables")
        shop.Base.metadata.create_all(runtime.database.engine)
        with runtime.database.session() as session:
            session.add_all(
                [
                    shop.Region(id=1, code="N", name="North"),
                    shop.Region(id=2, code="S", name="South"),
                ]
            )
            session.flush()
            session.add_all(
                [
                    shop.Warehouse(id=1, code="N1", region_id=1, capacity=500),
                    shop.Warehouse(id=2, code="N2", region_id=1, capacity=2000),
                    shop.Warehouse(id=3, code="S1", region_id=2, capacity=1500),
                ]
            )
            session.flush()
            session.add_all(
                [shop.Stock(warehouse_id=1, quantity=100), shop.Stock(warehouse_id=2, quantity=7)]
            )
        runtime.start()
        yield runtime, shop
    finally:
        runtime.stop()
        runtime.close()


def test_the_cached_table_guide_example_declares_and_reads(shop):
    runtime, module = shop
    assert runtime.registry.names() == ["regions", "warehouses"]
    assert Dependency("warehouses", "stock", "warehouse_id") in dependencies(runtime)
    assert module.warehouse_page(runtime, "N1") == {
        "code": "N1",
        "region": "North",
        "stocked": 100,
        "free": 400,
        "neighbours": ["N2"],
        "large": ["N2", "S1"],
    }
    warehouses = runtime.registry.table("warehouses")
    assert warehouses.stats()["loaded"] and warehouses.stats()["records"] == 3
    assert asyncio.run(module.stocked(runtime, 2)) == 7
    assert asyncio.run(module.stocked(runtime, 99)) is None
    with pytest.raises(KeyError):
        module.warehouse_page(runtime, "nope")


def test_the_cached_table_guide_example_follows_tracked_writes(shop):
    runtime, module = shop
    warehouses = runtime.registry.table("warehouses")
    assert module.warehouse_page(runtime, "N1")["stocked"] == 100  # loaded
    tracking = track(runtime.database.sessionmaker, runtime)
    try:
        with runtime.database.session() as session:
            session.add(module.Stock(warehouse_id=1, quantity=50))
        # DEPENDS_ON keys a stock row by its warehouse: only warehouse 1 is invalid.
        assert warehouses.cached(1) is None
        assert warehouses.cached(2) is not None and warehouses.cached(3) is not None
        assert module.warehouse_page(runtime, "N1")["stocked"] == 150
        with runtime.database.session() as session:
            session.execute(
                sa.update(module.Region).where(module.Region.id == 1).values(name="Northern")
            )
        page = module.warehouse_page(runtime, "N1")
        assert (page["region"], page["free"]) == ("Northern", 350)
        assert asyncio.run(module.stocked(runtime, 1)) == 150
    finally:
        tracking.stop()
