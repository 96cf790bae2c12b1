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
    """Resolves an old name to the module now at its new one: the names of `MOVED`, and
    (once a checkout name was imported) every `<package>.x` to `cachework.<package>.x`."""

    def __init__(self, first: bool) -> None:
        self.first = first  # the checkout names: before the path finders find a 2nd copy

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if self._target(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def _target(self, fullname: str) -> str | None:
        if not self.first:
            return MOVED.get(fullname)
        top = fullname.partition(".")[0]
        if top in _aliased and fullname != top:
            return f"cachework.{fullname}"
        return None

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(self._target(spec.name))

    def exec_module(self, module: ModuleType) -> None:
        """The module ran under its new name already."""


_aliased: set[str] = set()


def install() -> None:
    """Adds the finder of `MOVED` once, after the path finders."""
    if not any(isinstance(f, _Aliases) and not f.first for f in sys.meta_path):
        sys.meta_path.append(_Aliases(first=False))


def alias_checkout_name(name: str) -> None:
    """Called last by each of `PACKAGES`: run under its checkout name (`worker`), make that
    name, and every submodule under it, the `cachework.` module."""
    if name not in PACKAGES:
        return  # imported as cachework.<name>: nothing to do
    _aliased.add(name)
    if not any(isinstance(f, _Aliases) and f.first for f in sys.meta_path):
        sys.meta_path.insert(0, _Aliases(first=True))
    sys.modules[name] = importlib.import_module(f"cachework.{name}")
