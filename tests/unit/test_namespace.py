"""One top-level name: cachework's own code never resolves to an app's `tasks.py`,
`worker.py`, `celeryconfig.py` or `cache/` (Celery's first-steps layout), because it
imports only `cachework.` paths (issue 22, item 1).

Checked twice: statically, every import and module-path string of ours names a
`cachework.` module; and for real, a process whose first path entry is a team's folder
with modules of those names builds cachework's Celery app, registers every task, imports
every CLI command and the public API, and never imports the team's files (nor they ours).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cache", "importers", "tasks", "worker", "celeryconfig")
SOURCES = sorted(
    path
    for folder in ("cachework", "cache", "importers", "tasks", "worker")
    for path in (ROOT / folder).rglob("*.py")
)


def _old_names(path: Path) -> list[str]:
    """Imports and module-path strings of `path` that use a checkout-only top-level name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PACKAGES:
                found.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            top, dot, rest = node.value.partition(":")[0].partition(".")
            first = rest.split(".")[0]
            if top in PACKAGES and dot and first and _is_module(ROOT / top / first):
                found.append(node.value)
    return found


def _is_module(path: Path) -> bool:
    return path.is_dir() or path.with_suffix(".py").exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_our_code_names_only_cachework_paths(path):
    if path.name == "moves.py":  # the table of old names itself
        return
    assert _old_names(path) == []


TEAM = {
    "tasks.py": "raise ImportError('the team tasks.py was imported')\n",
    "worker.py": "raise ImportError('the team worker.py was imported')\n",
    "celeryconfig.py": "raise ImportError('the team celeryconfig.py was imported')\n",
    "cache/__init__.py": "raise ImportError('the team cache/ was imported')\n",
    "importers.py": "raise ImportError('the team importers.py was imported')\n",
}

PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    import cachework.api
    from cachework.worker import create_app
    from cachework.worker.cli import COMMAND_MODULES
    from cachework.settings import load_settings
    app = create_app(load_settings({"CACHEWORK_DATA_DIR": sys.argv[1]}))
    app.loader.import_default_modules()
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    tasks = sorted(name for name in app.tasks if name.startswith("cachework."))
    team = sorted(m for m in sys.modules if m.split(".")[0] in
                  ("tasks", "worker", "celeryconfig", "cache", "importers"))
    print(json.dumps({"tasks": tasks, "team_modules": team}))
    """
)


def test_a_teams_first_steps_layout_is_never_imported_by_cachework(tmp_path):
    team = tmp_path / "teamapp"
    for name, text in TEAM.items():
        (team / name).parent.mkdir(parents=True, exist_ok=True)
        (team / name).write_text(text)
    env = {"PYTHONPATH": str(team), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "data")],
        cwd=team,  # the team's folder first, as `celery -A` and `python -m` put it
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["team_modules"] == []
    assert "cachework.lookup" in out["tasks"] and "cachework.import_versions" in out["tasks"]
