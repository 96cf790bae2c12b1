"""Explicit Continuum and model set-up, run once per process before any model is used.

SQLAlchemy-Continuum only versions classes mapped after `make_versioned()`, and builds the
version classes when mappers are configured. Doing that as an import side effect makes
versioning depend on which module happens to be imported first; here it is one call,
`bootstrap()`, made by the worker, the CLI and the tests.

The app owns its Continuum set-up. A models module that calls `make_versioned` itself (its
own user class, plugins, options; Continuum's documentation puts that call at the top of
the models module) is used as it is. Only where the app makes no `make_versioned` call
does cachework make one, with its defaults: no user class (the import's user goes in the
transaction's meta) and `TransactionMetaPlugin`.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from types import ModuleType

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy_continuum import make_versioned, version_class, versioning_manager
from sqlalchemy_continuum.exc import ClassNotVersioned
from sqlalchemy_continuum.plugins import TransactionMetaPlugin

from cachework import example_app
from cachework.errors import ConfigError

_lock = threading.RLock()
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


def continuum_enabled() -> bool:
    """Whether `make_versioned` (the app's or ours) has hooked Continuum's global manager
    into SQLAlchemy's mappers in this process."""
    return sa.event.contains(
        orm.Mapper, "instrument_class", versioning_manager.builder.instrument_versioned_classes
    )


def enable_versioning() -> None:
    """Make cachework's default `make_versioned` call unless versioning is already on (the
    app's own call counts): no user class, `TransactionMetaPlugin`."""
    with _lock:
        if not continuum_enabled():
            make_versioned(user_cls=None, plugins=[TransactionMetaPlugin()])


def _import(names: tuple[str, ...]) -> list[ModuleType]:
    """Import the model modules, the app's own Continuum set-up winning.

    Continuum only sees classes mapped after `make_versioned`. So while the modules are
    imported, versioned classes mapped with no `make_versioned` call in force are noted;
    afterwards, if the app made no call at all, cachework makes its default one, and the
    noted classes are handed to Continuum as its own listener would have (it only
    collects them; nothing is built before `configure_mappers()`). `make_versioned` is
    never called twice: its listeners would run twice.
    """
    missed: list[tuple[orm.Mapper, type]] = []

    def note(mapper: orm.Mapper, cls: type) -> None:
        if getattr(cls, "__versioned__", None) is not None and not continuum_enabled():
            missed.append((mapper, cls))

    modules = []
    sa.event.listen(orm.Mapper, "instrument_class", note)
    try:
        for name in names:
            try:
                example_app.make_importable(name)
                modules.append(importlib.import_module(name))
            except ImportError as exc:
                raise ConfigError(
                    f"CACHEWORK_MODELS has {name!r}, which cannot be imported: {exc}"
                ) from None
    finally:
        sa.event.remove(orm.Mapper, "instrument_class", note)
    enable_versioning()  # a no-op when the app's models module made its own call
    for mapper, cls in missed:
        versioning_manager.builder.instrument_versioned_classes(mapper, cls)
    return modules


def _base_of(module: ModuleType) -> type:
    base = getattr(module, "Base", None)
    if not isinstance(getattr(base, "registry", None), orm.registry):
        raise ConfigError(f"CACHEWORK_MODELS module {module.__name__!r} has no declarative `Base`")
    return base


def _defined_by(module: ModuleType, cls: type) -> bool:
    """A class of `module`: defined there, or mapped elsewhere and exported by it."""
    return cls.__module__ == module.__name__ or vars(module).get(cls.__name__) is cls


def bootstrap(models: tuple[str, ...] | list[str] = ("demo.models",)) -> Models:
    """Import the model modules (versioning on: the app's own set-up, else cachework's
    defaults), configure mappers; idempotent."""
    key = tuple(models)
    with _lock:
        if key in _booted:
            return _booted[key]
        early = [m for m in key if m in sys.modules]
        modules = _import(key)
        orm.configure_mappers()
        metadatas: list[sa.MetaData] = []
        classes: list[type] = []
        for module in modules:
            base = _base_of(module)
            if base.metadata not in metadatas:
                metadatas.append(base.metadata)
            for mapper in list(base.registry.mappers):
                cls = mapper.class_
                if _defined_by(module, cls) and cls not in classes:
                    classes.append(cls)
        for cls in classes:
            if getattr(cls, "__versioned__", None) is None:
                continue
            try:
                version_class(cls)
            except ClassNotVersioned:
                raise ConfigError(
                    f"model {cls.__name__} in {cls.__module__!r} is marked __versioned__ but "
                    f"was mapped before versioning was on (imported early: {early}); call "
                    "make_versioned() at the top of the models module, or import it only "
                    "through bootstrap()"
                ) from None
        result = Models(tuple(modules), tuple(metadatas), tuple(classes))
        _booted[key] = result
        return result
