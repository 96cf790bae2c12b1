"""Old import paths, in one table: they keep working where they can.

Two kinds of old name:

- The checkout's own top-level names. In a checkout, `worker/`, `tasks/`, `importers/`
  and `cache/` sit at the repository's root, where they install as `cachework.worker`,
  `cachework.tasks` ... (a team's environment has no top-level module of ours but
  `cachework`). Something run from the checkout that still says `import worker` or
  `celery -A worker` gets the very same modules as `cachework.worker`: each of those
  packages calls `alias_checkout_name(__name__)` last, which makes the old name and every
  submodule under it an alias (one module object, so a patch through either name reaches
  the other), never a second copy.
- Modules that moved inside the namespace (`MOVED`), e.g. `cachework.cache.store`, now
  `cachework.cache.items.store`: `install()` adds a finder consulted only after the normal
  ones found no such file. Nothing in cachework imports an old name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

PACKAGES = ("cache", "importers", "tasks", "worker")  # installed as cachework.<name>

_FOUNDATIONS = "errors settings database pooler records schema migrate redis_client redis_policy"
MOVED: dict[str, str] = {
    **{f"cachework.cache.{name}": f"cachework.{name}" for name in _FOUNDATIONS.split()},
    "cachework.cache.migrations": "cachework.migrations",
    "cachework.cache.invalidation.tables": "cachework.schema",
    "cachework.cache.runtime": "cachework.worker.runtime",
    "cachework.cache.metrics": "cachework.worker.metrics",
    "cachework.cache.health": "cachework.worker.process_health",
    "cachework.cache.probes": "cachework.worker.probes",
    "cachework.cache.jobs": "cachework.worker.jobs",
    **{
        f"cachework.cache.{name}": f"cachework.cache.tables.{name}"
        for name in ["table", "full_table", "indexes", "source", "storage", "registry"]
    },
    **{
        f"cachework.cache.{name}": f"cachework.cache.items.{name}"
        for name in ["store", "plugins", "projects", "sync", "locks"]
    },
}


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old name to the module now at the new name `target` gives."""

    def target(self, fullname: str) -> str | None:
        raise NotImplementedError

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if self.target(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(self.target(spec.name))

    def exec_module(self, module: ModuleType) -> None:
        """The module ran under its new name already."""


class _Moved(_Aliases):
    """The names of `MOVED`; consulted after the path finders."""

    def target(self, fullname: str) -> str | None:
        return MOVED.get(fullname)


class _CheckoutNames(_Aliases):
    """`<package>.x` as `cachework.<package>.x` for each package imported by its checkout
    name; consulted first, before a path finder finds the file a second time."""

    def __init__(self) -> None:
        self.packages: set[str] = set()

    def target(self, fullname: str) -> str | None:
        top, dot, _rest = fullname.partition(".")
        return f"cachework.{fullname}" if dot and top in self.packages else None


def _installed(kind: type[_Aliases]) -> _Aliases | None:
    return next((f for f in sys.meta_path if isinstance(f, kind)), None)


def install() -> None:
    """Adds the finder of `MOVED` once, after the path finders."""
    if _installed(_Moved) is None:
        sys.meta_path.append(_Moved())


def alias_checkout_name(name: str) -> None:
    """Called last by each of `PACKAGES`: run under its checkout name (`worker`), make that
    name, and every submodule under it, the `cachework.` module."""
    if name not in PACKAGES:
        return  # imported as cachework.<name>: nothing to do
    finder = _installed(_CheckoutNames)
    if finder is None:
        finder = _CheckoutNames()
        sys.meta_path.insert(0, finder)
    finder.packages.add(name)
    sys.modules[name] = importlib.import_module(f"cachework.{name}")
