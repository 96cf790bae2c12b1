"""A process's cached tables, declared in configuration and built on first use.

`Settings.cached_tables` names modules (default `demo.cached_tables`); each defines
`CACHED_TABLES`, a dict of table name -> factory taking an Engine and returning a
`CachedTable` or `FullTableCache`. A table is built the first time it is asked for and
loads on its first read, so each process (a prefork child included: the runtime makes a
new registry after fork) opens its own connections and holds its own records.

The invalidation tracker uses it as its target: `invalidate` marks records invalid
(refreshed lazily), `drop_all` forgets everything when events may have been lost, `cursor`
and `listener` are the tracker's bookkeeping.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from cachework import example_app
from cachework.cache.tables.full_table import FullTableCache
from cachework.cache.tables.table import CachedTable
from cachework.errors import ConfigError, NotFoundError, ValidationError

log = logging.getLogger(__name__)
Table = CachedTable | FullTableCache
Factory = Callable[[sa.Engine], Table]


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
        """Drop every table's records (they reload on next read), e.g. after lost events.

        The caller says why at WARNING, rate-limited (a flood of junk entries drops the
        tables once per batch); here only the tables, at DEBUG."""
        tables = list(self._tables.items())
        log.debug("dropping cached tables %s: %s", [n for n, _ in tables] or "(none)", reason)
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
            example_app.make_importable(module_name)
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
