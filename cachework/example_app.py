"""The example app (`demo/`) belongs to cachework's checkout and is not installed: a team's
environment gets no top-level `demo` of ours. The default settings name it
(`CACHEWORK_MODELS=demo.models`, `CACHEWORK_CACHED_TABLES=demo.cached_tables`), so that
`make demo`, `cachework demo` and a worker started in the checkout find it there.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

NAME = "demo"


def make_importable(module: str) -> None:
    """Before importing `module`: when it is the example app's and nothing named `demo` is
    importable, add the checkout's root to the end of `sys.path` (after the app's own
    folders, so never in front of a module of theirs). Elsewhere: nothing."""
    if module.split(".")[0] != NAME or importlib.util.find_spec(NAME) is not None:
        return
    root = Path(__file__).resolve().parents[1]
    if (root / NAME / "__init__.py").is_file() and (root / "pyproject.toml").is_file():
        sys.path.append(str(root))
