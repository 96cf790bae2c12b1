"""cachework/moves.py: every old import path of a module that moved out of `cache/` is the
same module object as its new home (so a patch through either name reaches the other),
and nothing in cachework itself still imports an old name."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from cachework import cache  # noqa: F401  (installs the alias finder)
from cachework.moves import MOVED

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cachework", "cache", "importers", "worker", "tasks", "demo")


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_name_is_the_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]


def test_a_patch_through_the_old_name_reaches_the_new(monkeypatch):
    old = importlib.import_module("cachework.cache.settings")
    monkeypatch.setattr(old, "load_settings", "patched")
    assert importlib.import_module("cachework.settings").load_settings == "patched"


def test_from_imports_of_old_names_work():
    from cachework.cache.errors import ValidationError
    from cachework.cache.settings import Settings
    from cachework.cache.store import get_item

    assert ValidationError is importlib.import_module("cachework.errors").ValidationError
    assert Settings is importlib.import_module("cachework.settings").Settings
    assert get_item is importlib.import_module("cachework.cache.items.store").get_item


def test_a_name_that_never_existed_is_still_missing():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("cachework.cache.no_such_module")


def _old_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n in MOVED]
    return found


def test_nothing_in_cachework_imports_an_old_name():
    files = [f for package in PACKAGES for f in sorted((ROOT / package).rglob("*.py"))]
    assert files
    assert [hit for f in files for hit in _old_imports(f)] == []
