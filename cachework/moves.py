"""The modules that moved out of `cache/`, in one table: their old import paths keep
working, and their loggers keep their old names.

Each old name is an alias of the module that now holds the code (the same module object,
so a patch through either name reaches the other); nothing in cachework imports an old
name. `cache/__init__.py` installs the finder, which is consulted only after the normal
ones found no such file. A moved module logs under its old name (`logger(__name__)`):
operators' log filters, alerts and the JSON `logger` field keep matching.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from types import ModuleType

_FOUNDATIONS = "errors settings database pooler records schema migrate redis_client redis_policy"
MOVED: dict[str, str] = {
    **{f"cache.{name}": f"cachework.{name}" for name in _FOUNDATIONS.split()},
    "cache.migrations": "cachework.migrations",
    "cache.invalidation.tables": "cachework.schema",
    "cache.runtime": "worker.runtime",
    "cache.metrics": "worker.metrics",
    "cache.health": "worker.process_health",
    "cache.probes": "worker.probes",
    "cache.jobs": "worker.jobs",
    **{
        f"cache.{name}": f"cache.tables.{name}"
        for name in ["table", "full_table", "indexes", "source", "storage", "registry"]
    },
    **{
        f"cache.{name}": f"cache.items.{name}"
        for name in ["store", "plugins", "projects", "sync", "locks"]
    },
}


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves each old name of `MOVED` to the module now at the new one."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The module ran under its new name already."""


def install() -> None:
    """Adds the alias finder once, after the path finders."""
    if not any(isinstance(finder, _Aliases) for finder in sys.meta_path):
        sys.meta_path.append(_Aliases())


_OLD_NAMES = {new: old for old, new in MOVED.items() if old != "cache.invalidation.tables"}


def logger(module: str) -> logging.Logger:
    """The logger of `module` (its `__name__`), under its name before the move if it moved."""
    return logging.getLogger(_OLD_NAMES.get(module, module))
