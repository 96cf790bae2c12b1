"""Explicit Continuum and model set-up, run once per process before any model is used.

SQLAlchemy-Continuum only versions classes mapped after `make_versioned()`, and builds the
version classes when mappers are configured. Doing that as an import side effect makes
versioning depend on which module happens to be imported first; here it is one call,
`bootstrap()`, made by the worker, the CLI and the tests.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from types import ModuleType

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy_continuum import make_versioned, version_class
from sqlalchemy_continuum.exc import ClassNotVersioned
from sqlalchemy_continuum.plugins import TransactionMetaPlugin

from cache.errors import ConfigError

_lock = threading.Lock()
_versioning_on = False
_booted: dict[tuple[str, ...], Models] = {}


@dataclass(frozen=True)
class Models:
    """What the configured model modules define, after mappers are configured."""

    modules: tuple[ModuleType, ...]
    metadatas: tuple[sa.MetaData, ...]
    classes: tuple[type, ...]

    @property
    def versioned(self) -> tuple[type, ...]:
        return tuple(c for c in self.classes if getattr(c, "__versioned__", None) is not None)

    def by_name(self) -> dict[str, type]:
        return {c.__name__: c for c in self.classes}


def enable_versioning() -> None:
    """Call `make_versioned` once per process (the user goes in the transaction's meta)."""
    global _versioning_on
    with _lock:
        if not _versioning_on:
            make_versioned(user_cls=None, plugins=[TransactionMetaPlugin()])
            _versioning_on = True


def _base_of(module: ModuleType) -> type:
    base = getattr(module, "Base", None)
    if not isinstance(getattr(base, "registry", None), orm.registry):
        raise ConfigError(f"CACHEWORK_MODELS module {module.__name__!r} has no declarative `Base`")
    return base


def bootstrap(models: tuple[str, ...] | list[str] = ("demo.models",)) -> Models:
    """Enable versioning, import the model modules, configure mappers; idempotent."""
    key = tuple(models)
    with _lock:
        if key in _booted:
            return _booted[key]
    enable_versioning()
    early = [m for m in key if m in sys.modules]
    modules = []
    for name in key:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise ConfigError(
                f"CACHEWORK_MODELS has {name!r}, which cannot be imported: {exc}"
            ) from None
    orm.configure_mappers()
    metadatas: list[sa.MetaData] = []
    classes: list[type] = []
    for module in modules:
        base = _base_of(module)
        if base.metadata not in metadatas:
            metadatas.append(base.metadata)
        for mapper in list(base.registry.mappers):
            cls = mapper.class_
            if cls.__module__ == module.__name__ and cls not in classes:
                classes.append(cls)
    for cls in classes:
        if getattr(cls, "__versioned__", None) is None:
            continue
        try:
            version_class(cls)
        except ClassNotVersioned:
            raise ConfigError(
                f"model {cls.__name__} in {cls.__module__!r} is marked __versioned__ but was "
                f"mapped before bootstrap() (imported early: {early}); import model modules "
                "only through bootstrap()"
            ) from None
    result = Models(tuple(modules), tuple(metadatas), tuple(classes))
    with _lock:
        _booted[key] = result
    return result
