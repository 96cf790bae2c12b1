"""What an item reads is checked against the models once, at start-up (issue 23): a
declaration that does not fit them must stop the worker with one ConfigError line naming
the plugin, the item and the bad part, not mark the wrong projects (or none) later.

Pure: `reads.check` resolves the declarations against the demo's model metadata; no
database is touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cachework.cache.items.projects import ProjectSource
from cachework.cache.items.reads import ItemReads, check, reads
from cachework.errors import ConfigError
from demo.models import Base, Project
from demo.plugin import InventoryPlugin
from tests.conftest import make_env, settings_of

PROJECTS = ProjectSource("projects", "uuid", "uuid", model_column=Project.__table__.c.uuid)


class Plugin:
    """A plugin with the demo's item names and one declaration under test."""

    app_name = "inventory"
    item_names = ("summary", "by_category")

    def __init__(self, depends_on: dict) -> None:
        self.depends_on = depends_on


def check_one(depends_on: dict) -> ItemReads:
    return check({"inventory": Plugin(depends_on)}, [Base.metadata], PROJECTS)


def config_error(depends_on: dict) -> str:
    """The one-line message of the ConfigError a declaration gives."""
    with pytest.raises(ConfigError) as caught:
        check_one(depends_on)
    message = str(caught.value)
    assert "\n" not in message, message
    assert "cache plugin 'inventory' depends_on" in message, message
    return message


def test_the_demo_declarations_resolve_to_one_route_per_table_and_first_column():
    found = check({"inventory": InventoryPlugin()}, [Base.metadata], PROJECTS)
    assert sorted(found.routes) == ["@items:categories", "@items:products.project_uuid"]
    users = {name: sorted(u.name for u in uses) for name, uses in found.uses.items()}
    assert users == {
        "@items:products.project_uuid": ["by_category", "summary"],
        "@items:categories": ["by_category"],
    }
    assert found.items() == [("inventory", "by_category", False), ("inventory", "summary", False)]


def test_the_projects_source_from_settings_resolves_the_same_routes(tmp_path: Path):
    settings = settings_of(make_env(tmp_path))
    source = ProjectSource.from_settings(settings, metadata=[Base.metadata])
    assert source.model_column is Project.__table__.c.uuid
    found = check({"inventory": InventoryPlugin()}, [Base.metadata], source)
    assert sorted(found.routes) == ["@items:categories", "@items:products.project_uuid"]


def test_an_unknown_table_is_named():
    message = config_error({"summary": [reads("nosuch", project="project_uuid")]})
    assert "['summary']" in message and "table 'nosuch' is not in the models" in message


def test_an_unknown_column_is_named():
    message = config_error({"summary": [reads("products", project="project_id")]})
    assert "products has no column 'project_id'" in message


def test_an_unknown_column_further_along_the_path_is_named():
    message = config_error({"summary": [reads("products", project="category_id.project")]})
    assert "categories has no column 'project'" in message


def test_a_column_with_no_foreign_key_on_the_path_is_named():
    message = config_error({"by_category": [reads("products", project="sku")]})
    assert "['by_category']" in message and "products.sku has no foreign keys" in message


def test_a_path_that_ends_elsewhere_than_the_projects_table_is_named():
    message = config_error({"summary": [reads("products", project="category_id")]})
    assert "project='category_id' ends at categories" in message
    assert "not at the projects table projects" in message


def test_a_path_that_goes_on_past_the_projects_table_is_named():
    message = config_error({"summary": [reads("products", project="project_uuid.uuid.title")]})
    assert "reaches the projects table projects at 'uuid'; nothing may follow" in message


def test_an_unknown_item_name_is_named_with_the_valid_ones():
    message = config_error({"totals": [reads("products", project="project_uuid")]})
    assert "'totals' is not an item name" in message
    assert "'summary', 'by_category', '*'" in message


def test_a_site_wide_item_keyed_by_project_is_refused():
    plugin = Plugin({})
    plugin.site_depends_on = {"summary": [reads("products", project="project_uuid")]}
    with pytest.raises(ConfigError, match="site-wide item depends on the whole table") as caught:
        check({"inventory": plugin}, [Base.metadata], PROJECTS)
    assert "project='project_uuid'" in str(caught.value)


def test_with_no_projects_table_only_site_wide_reads_are_followed() -> None:
    """CACHEWORK_PROJECTS=off: project items have no project to be rebuilt for, so their
    reads are checked (a bad table is still an error) but not followed."""

    class Plugin:
        app_name = "mixed"
        depends_on = {"per_project": [reads("products", project="project_uuid")]}
        site_depends_on = {"totals": [reads("products")]}

    found = check({"mixed": Plugin()}, [Base.metadata], ProjectSource.off())
    assert list(found.routes) == ["@items:products"]
    assert found.items() == [("mixed", "totals", True)]
    Plugin.depends_on = {"per_project": [reads("nosuch", project="x")]}
    with pytest.raises(ConfigError, match="'nosuch' is not in the models"):
        check({"mixed": Plugin()}, [Base.metadata], ProjectSource.off())
