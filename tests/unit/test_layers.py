"""The layers of the code, as DEVELOPERS.md gives them, checked on every import.

cachework/ (foundations) <- cache/ and importers/ (side by side) <- worker/ (process wiring)
<- tasks/ and celeryconfig.py (installed as cachework.cache, cachework.worker ...). Each
imports only the layers below it, cache/ and importers/
never each other, and no two files import each other in a loop. An import under
`if TYPE_CHECKING:` names a type only and is left out; an import inside a function counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {
    "cachework": 1,
    "cache": 2,
    "importers": 2,
    "worker": 3,
    "tasks": 4,
    "celeryconfig": 4,
    "api": 5,  # cachework.api: the public face over everything; nothing of ours imports it
}
PACKAGES = ("cache", "importers", "worker", "tasks")  # in the checkout's root, installed
# as cachework.<package> (pyproject's package-dir)


def _modules() -> dict[str, Path]:
    """Every module of ours by its installed name (`cachework.worker.runtime`)."""
    found = {"celeryconfig": ROOT / "celeryconfig.py"}
    for package in ("cachework", *PACKAGES):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if package != "cachework":
                parts.insert(0, "cachework")
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(name: str, tree: ast.AST, package: str) -> set[str]:
    """The modules of ours `tree` imports at run time (TYPE_CHECKING blocks left out)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import module` runs pkg/__init__ only
                full = f"{base}.{alias.name}"
                names.add(full if full in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {_ours(n) for n in names if _ours(n) not in (None, name)}


def _ours(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imported(name, ast.parse(path.read_text(), str(path)), package)
    return graph


GRAPH = _graph()


def _top(name: str) -> str:
    """`cache` for cachework.cache.x, `cachework` for a foundation (cachework.errors)."""
    parts = name.split(".")
    if parts[0] == "cachework" and len(parts) > 1 and parts[1] in (*PACKAGES, "api"):
        return parts[1]
    return parts[0]


def _layer(name: str) -> int:
    return LAYERS[_top(name)]


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_a_module_imports_only_the_layers_below_it(name):
    up = sorted(d for d in GRAPH[name] if _layer(d) > _layer(name))
    assert not up, f"{name} (layer {_layer(name)}) imports a higher layer: {up}"


def test_the_caches_and_the_version_import_stand_side_by_side():
    crossing = sorted(
        (name, dep)
        for name, deps in GRAPH.items()
        for dep in deps
        if {_top(name), _top(dep)} == {"cache", "importers"}
    )
    assert not crossing, crossing


def test_no_two_files_import_each_other_in_a_loop():
    state: dict[str, int] = {}  # 1: on the path, 2: done
    loops: list[list[str]] = []

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                loops.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [name])
    assert not loops, loops


def test_the_checker_sees_imports():
    """The rules above hold because nothing is wrong, not because nothing was read."""
    assert "cachework.errors" in GRAPH["cachework.cache.items.store"]
    assert "cachework.worker.runtime" in GRAPH["cachework.worker.celery_app"]
    # its lazy app, from inside a function
    assert "cachework.worker.celery_app" in GRAPH["cachework.worker"]
    assert "cachework.importers.request" in GRAPH["cachework.importers.versions"]
    assert len(GRAPH) > 100
