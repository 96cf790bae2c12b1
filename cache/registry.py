"""This process's cached tables, declared in configuration and created lazily after fork.

`Settings.cached_tables` names modules (default `demo.cached_tables`); each defines
`CACHED_TABLES`, a dict of table name -> factory taking an Engine and returning a
`CachedTable` or `FullTableCache`. A table is built the first time it is asked for and
loads on its first read, so each prefork child opens its own connections and holds its own
records; `reset_after_fork()` (a PROCESS_INIT_HOOK) forgets anything a parent held.

The invalidation listener (issue 6) and tasks use `get_registry()`: `invalidate` marks
records invalid (refreshed lazily), `drop_all` forgets everything when events may have
been lost, `cursor` and `listener` are the listener's bookkeeping.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from cache.database import get_database
from cache.errors import ConfigError, NotFoundError, ValidationError
from cache.full_table import FullTableCache
from cache.settings import Settings, load_settings
from cache.table import CachedTable
from worker.bootstrap import bootstrap

log = logging.getLogger(__name__)
Table = CachedTable | FullTableCache
Factory = Callable[[sa.Engine], Table]

_lock = threading.Lock()
_registry: Registry | None = None


class Registry:
    """The declared cached tables of one process, built on first use."""

    def __init__(
        self, factories: dict[str, Factory], engine: Callable[[], sa.Engine] | sa.Engine
    ) -> None:
        self.cursor: str = "0"
        self.listener: dict[str, Any] = {}
        self._factories = dict(factories)
        self._engine = engine
        self._tables: dict[str, Table] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The declared cached table names, in declaration order."""
        return list(self._factories)

    def _check(self, name: object) -> str:
        if not isinstance(name, str) or name not in self._factories:
            raise NotFoundError(
                f"cached table {name!r} is not declared; declared tables: {self.names()}"
            )
        return name

    def table(self, name: str) -> Table:
        """The table `name` (built now if this process has not built it yet)."""
        table = self._tables.get(self._check(name))
        if table is not None:
            return table
        with self._lock:
            table = self._tables.get(name)
            if table is None:
                engine = self._engine() if callable(self._engine) else self._engine
                table = self._factories[name](engine)
                if not isinstance(table, CachedTable | FullTableCache):
                    raise ConfigError(
                        f"cached table factory for {name!r} returned {table!r}, "
                        "not a CachedTable or FullTableCache"
                    )
                self._tables[name] = table
            return table

    def coerce_key(self, name: str, key: object) -> object:
        """`key` as table `name`'s primary-key type; ValidationError naming it otherwise."""
        if isinstance(key, list | dict | tuple | set):
            raise ValidationError(f"{name} key={key!r} must be a single value")
        return self.table(name).coerce_key(key)

    def invalidate(self, name: str, keys: list | None) -> None:
        """Mark these primary keys (None = every record) invalid; refreshed on next read.

        A table this process has not built holds nothing, so there is nothing to do."""
        table = self._tables.get(self._check(name))
        if table is None:
            return
        if keys is None:
            table.invalidate_all()
        else:
            if not isinstance(keys, list | tuple):
                raise ValidationError(f"{name} keys={keys!r} must be a list or None")
            table.invalidate_keys(keys)

    def drop_all(self, reason: str) -> None:
        """Drop every table's records (they reload on next read), e.g. after lost events."""
        tables = list(self._tables.items())
        log.warning("dropping cached tables %s: %s", [n for n, _ in tables] or "(none)", reason)
        for _name, table in tables:
            table.clear()

    def status(self) -> dict[str, dict[str, Any]]:
        """Statistics of every declared table (unbuilt ones as not loaded, zero counts)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self._factories:
            table = self._tables.get(name)
            out[name] = table.stats() if table is not None else _unbuilt()
        return out


def _unbuilt() -> dict[str, Any]:
    return {
        "loaded": False,
        "records": 0,
        "invalid": 0,
        "hits": 0,
        "misses": 0,
        "refreshes": 0,
        "last_refresh": None,
    }


def load_declarations(modules: tuple[str, ...] | list[str]) -> dict[str, Factory]:
    """The table factories declared by `modules` (each a module with `CACHED_TABLES`)."""
    factories: dict[str, Factory] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"CACHEWORK_CACHED_TABLES has {module_name!r}, which cannot be imported: {exc}"
            ) from None
        declared = getattr(module, "CACHED_TABLES", None)
        if not isinstance(declared, dict):
            raise ConfigError(
                f"cached table module {module_name!r} has no CACHED_TABLES dict "
                "(table name -> factory taking an Engine)"
            )
        for name, factory in declared.items():
            if name in factories:
                raise ConfigError(f"cached table {name!r} is declared twice ({module_name!r})")
            if not callable(factory):
                raise ConfigError(f"cached table {name!r} in {module_name!r} is not a factory")
            factories[name] = factory
    return factories


def registry_from_settings(settings: Settings) -> Registry:
    """A registry for `settings`: models bootstrapped, declarations imported, the engine
    taken from this process's Database when a table is first built."""
    bootstrap(settings.models)
    return Registry(load_declarations(settings.cached_tables), lambda: get_database().engine)


def get_registry() -> Registry:
    """This process's registry, created lazily (so after fork in a pool child)."""
    global _registry
    registry = _registry
    if registry is not None:
        return registry
    with _lock:
        if _registry is None:
            _registry = registry_from_settings(load_settings())
        return _registry


def set_registry(registry: Registry | None) -> Registry | None:
    """Install `registry` as this process's (tests, embedding); returns the previous one."""
    global _registry
    with _lock:
        previous, _registry = _registry, registry
        return previous


def reset_after_fork() -> None:
    """Forget tables inherited from the parent (a PROCESS_INIT_HOOK); the lock is new too,
    in case a parent thread held it at fork time."""
    global _registry, _lock
    _lock = threading.Lock()
    _registry = None
