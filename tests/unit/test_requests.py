"""Typed requests of the cache jobs (cache/requests.py), their results (cache/results.py)
and the bounded-text check (cachework/text.py): pure, against fake plugins and a fake
project check."""

from __future__ import annotations

import dataclasses

import pytest

from cachework.cache.requests import DeleteRequest, InvalidationRequest, SyncRequest, item_names
from cachework.cache.results import DeleteResult, InvalidationResult, SyncResult
from cachework.errors import NotFoundError, ValidationError
from cachework.schema import NAME_MAX
from cachework.text import bounded, fits

PROJECTS = {"p1": "p1", "P1": "p1"}  # a key type that canonicalises case


class Plugin:
    def __init__(self, app_name: str, item_names: tuple[str, ...] | None = None) -> None:
        self.app_name = app_name
        if item_names is not None:
            self.item_names = item_names

    def update_cache(self, store, session, project=None, name=None) -> None:  # pragma: no cover
        pass


PLUGINS = {"inventory": Plugin("inventory", ("summary", "by_category"))}


def check_project(project: object) -> str | None:
    if project is None:
        return None
    if not isinstance(project, str):
        raise ValidationError(f"project={project!r} must be a string")
    if project not in PROJECTS:
        raise NotFoundError(f"project {project!r} does not exist")
    return PROJECTS[project]


def sync(*args, **kwargs) -> SyncRequest:
    return SyncRequest.parse(*args, plugins=PLUGINS, check_project=check_project, **kwargs)


# --- SyncRequest ------------------------------------------------------------------------


def test_a_sync_request_is_canonical_frozen_and_plain():
    request = sync("P1", "inventory", ["summary"], "ann")
    assert request == SyncRequest("p1", "inventory", ("summary",), "ann")
    assert request.name_list == ["summary"]
    assert [p.app_name for p in request.plugins(PLUGINS)] == ["inventory"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.project = "p2"  # type: ignore[misc]
    assert sync() == SyncRequest()
    assert sync().name_list is None and len(sync().plugins(PLUGINS)) == 1


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((None, 7), ValidationError, "app_name=7 must be a string or None"),
        ((None, "ghost"), NotFoundError, "app_name='ghost' has no cache plugin"),
        ((None, None, "summary"), ValidationError, "must be a list of item names"),
        ((None, None, ["nope"]), NotFoundError, "item name(s) 'nope' unknown"),
        ((None, None, [""]), ValidationError, "name='' must be a non-empty string"),
        ((None, None, None, "u\x00"), ValidationError, "user='u\\x00' must be a string"),
        ((None, None, None, "u" * 256), ValidationError, "must be a string of <= 255"),
        (("p9",), NotFoundError, "project 'p9' does not exist"),
        ((3,), ValidationError, "project=3 must be a string"),
    ],
)
def test_a_bad_sync_argument_is_named(args, error, message):
    with pytest.raises(error) as caught:
        sync(*args)
    assert message in str(caught.value)


def test_the_project_is_checked_last_and_once():
    calls: list[object] = []

    def counting(project: object) -> str | None:
        calls.append(project)
        return check_project(project)

    with pytest.raises(NotFoundError):
        SyncRequest.parse("p1", "ghost", plugins=PLUGINS, check_project=counting)
    assert calls == []  # the cheap checks first: no session needed for a bad app
    SyncRequest.parse("p1", plugins=PLUGINS, check_project=counting)
    assert calls == ["p1"]


def test_item_names_turns_a_task_name_into_a_list():
    assert item_names(None) is None and item_names("summary") == ["summary"]
    with pytest.raises(ValidationError, match="name=3 must be an item name"):
        item_names(3)


# --- DeleteRequest ----------------------------------------------------------------------


def delete(*args, stored=("retired",)) -> DeleteRequest:
    def stored_apps():
        return list(stored)

    return DeleteRequest.parse(
        *args, plugins=PLUGINS, check_project=check_project, stored_apps=stored_apps
    )


def test_a_delete_request_accepts_known_and_retired_apps():
    assert delete() == DeleteRequest()
    assert delete("P1", "inventory") == DeleteRequest("p1", "inventory")
    assert delete(None, "retired") == DeleteRequest(None, "retired")


def test_a_delete_of_an_unknown_app_lists_the_known_ones():
    with pytest.raises(NotFoundError) as caught:
        delete(None, "ghost")
    assert str(caught.value) == (
        "app_name='ghost' has no cache plugin and no items (known apps: inventory, retired)"
    )
    with pytest.raises(ValidationError, match="app_name=5 must be a string or None"):
        delete(None, 5)


def test_a_delete_asks_for_stored_apps_only_when_it_needs_them():
    def refuse():
        raise AssertionError("stored apps read for a plugin's app")

    request = DeleteRequest.parse(
        None, "inventory", plugins=PLUGINS, check_project=check_project, stored_apps=refuse
    )
    assert request.app_name == "inventory"


# --- InvalidationRequest ----------------------------------------------------------------


def integer(key: object) -> int:
    if not str(key).isdigit():
        raise ValidationError(f"{key!r} is not an integer")
    return int(key)


def invalidation(*args, **kwargs) -> InvalidationRequest:
    return InvalidationRequest.parse(
        *args,
        known_tables={"categories": integer, "products": None},
        max_keys=3,
        plugins=PLUGINS,
        check_project=check_project,
        **kwargs,
    )


def test_an_invalidation_without_a_scope_rebuilds_nothing():
    request = invalidation("categories", ["3", 3, "4"])
    assert request.event.keys == (3, 4) and request.sync is None
    assert request.task_kwargs() == {
        "table": "categories",
        "keys": [3, 4],
        "project": None,
        "app_name": None,
        "names": None,
    }


def test_an_invalidation_with_a_scope_carries_its_sync_request():
    request = invalidation("products", None, "P1", "inventory", ["summary", "summary"])
    assert request.sync == SyncRequest("p1", "inventory", ("summary",))
    assert request.event.project == "P1"  # the event is published as given
    assert request.task_kwargs()["names"] == ["summary"]
    assert invalidation("products", names=["summary"]).sync == SyncRequest(None, None, ("summary",))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("nope",), NotFoundError, "known tables: categories, products"),
        (("categories", ["x"]), ValidationError, "keys[0]: 'x' is not an integer"),
        (("categories", [1, 2, 3, 4]), ValidationError, "at most 3"),
        (("categories", None, "p9"), NotFoundError, "project 'p9' does not exist"),
        (("categories", None, None, "ghost"), NotFoundError, "app_name='ghost'"),
        (("categories", None, None, None, ["nope"]), NotFoundError, "'nope' unknown"),
        (("categories", None, " "), ValidationError, "project=' ' must be a non-empty string"),
        (("categories", ["k" * 256]), ValidationError, "keys[0]="),
    ],
)
def test_a_bad_invalidation_is_named(args, error, message):
    with pytest.raises(error) as caught:
        invalidation(*args)
    assert message in str(caught.value)


# --- results ----------------------------------------------------------------------------


def test_sync_results_give_the_task_contract_and_combine():
    one = SyncResult(2, 1, ["inventory failed for project p1: boom"])
    assert one.to_json() == {
        "updated": 2,
        "projects": 1,
        "errors": ["inventory failed for project p1: boom"],
    }
    site = SyncResult(1, 0, [])
    total = SyncResult.combine([one, site, SyncResult.from_json(one.to_json())])
    assert total.to_json() == {"updated": 5, "projects": 2, "errors": one.errors * 2}
    assert one.errors == ["inventory failed for project p1: boom"]  # not shared
    counted = SyncResult(deferred=0)
    counted.add(SyncResult(1, 1, [], deferred=1))
    assert counted.to_json() == {"updated": 1, "projects": 1, "errors": [], "deferred": 1}


def test_delete_and_invalidation_results_give_the_task_contract():
    assert DeleteResult(4).to_json() == {"deleted": 4}
    assert InvalidationResult("1-0", 2).to_json() == {"event_id": "1-0", "rebuilt": 2}


# --- bounded text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "options", "ok"),
    [
        ("a", {}, True),
        ("x" * NAME_MAX, {}, True),
        ("x" * (NAME_MAX + 1), {}, False),
        ("", {}, False),
        ("", {"empty": True}, True),
        ("a\x00", {"empty": True}, False),
        (" ", {}, True),
        (" ", {"blank": False}, False),
        (5, {}, False),
        (None, {}, False),
    ],
)
def test_fits(value, options, ok):
    assert fits(value, **options) is ok


def test_bounded_names_the_field_and_cuts_a_huge_value():
    assert bounded("name", "ok") == "ok"
    assert bounded("user", None, none="None") is None
    with pytest.raises(ValidationError) as caught:
        bounded("name", "n" * 10_000_000)
    message = str(caught.value)
    assert message.startswith("name='nnn") and len(message) < 200
    assert message.endswith("must be a non-empty string of <= 255 characters without NUL")
    with pytest.raises(ValidationError, match=r"^label=None must be a string of <= 8 "):
        bounded("label", None, 8, empty=True)
    with pytest.raises(ValidationError, match=r", or None \(site-wide\)$"):
        bounded("project", "", none="None (site-wide)")
