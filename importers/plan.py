"""The plan of a version import run: which units (versioned models with a table of their
own, versioned association tables) it imports, in foreign-key order, and the refusal,
before anything runs, of any Continuum set-up the import cannot reproduce."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy_continuum.plugins import (
    NullDeletePlugin,
    Plugin,
    PropertyModTrackerPlugin,
    TransactionChangesPlugin,
    TransactionMetaPlugin,
)
from sqlalchemy_continuum.utils import get_versioning_manager

from cachework.errors import NotFoundError, UnsupportedVersioning
from cachework.importers.association_unit import AssociationVersions
from cachework.importers.model_unit import VersionModel

Unit = VersionModel | AssociationVersions

# Plugins whose effect on a flush the import reproduces. Other plugins that hook into the
# flush (version objects, version table columns) make a model unsupported.
ROW_HOOKS = (
    "before_flush",
    "before_create_version_objects",
    "after_create_version_objects",
    "after_create_version_object",
    "after_build_version_table_columns",
)
SUPPORTED_PLUGINS = (
    TransactionMetaPlugin,
    TransactionChangesPlugin,
    PropertyModTrackerPlugin,
    NullDeletePlugin,
)


def is_versioned(cls: type) -> bool:
    return getattr(cls, "__versioned__", None) is not None


def unsupported_plugins(manager: Any) -> list[str]:
    """The plugins of a versioning manager whose effect on a flush the import cannot
    reproduce: those that hook into the writing of version objects or tables."""
    found = []
    for plugin in manager.plugins:
        if isinstance(plugin, SUPPORTED_PLUGINS):
            continue
        kind = type(plugin)
        if kind.__module__ == "sqlalchemy_continuum.plugins.flask":
            continue  # transaction_args only: honoured through Continuum's own call
        hooks = [h for h in ROW_HOOKS if getattr(kind, h, None) is not getattr(Plugin, h)]
        if hooks:
            found.append(f"plugin {kind.__name__} (hooks {', '.join(hooks)})")
    return found


def refuse_plugins(classes: Sequence[type], models: Sequence[type]) -> None:
    """Refuse a run whose models' manager has a plugin the import cannot reproduce.
    `make_versioned()` installs plugins manager-wide, for every versioned model: naming
    models cannot avoid one, so the error names them all and says so."""
    managers = {id(m): m for m in map(get_versioning_manager, models)}
    for manager in managers.values():
        found = unsupported_plugins(manager)
        if not found:
            continue
        affected = sorted(
            c.__name__ for c in classes if is_versioned(c) and get_versioning_manager(c) is manager
        )
        raise UnsupportedVersioning(
            f"the version import cannot reproduce what Continuum writes for "
            f"{', '.join(affected)}: {'; '.join(found)}. Plugins of make_versioned() apply to "
            "every versioned model, so no model can be imported, not by name either, while "
            "the app installs it; nothing was imported"
        )


def _table_owner(cls: type) -> type:
    """The class whose table `cls` uses (itself, unless single-table inheritance)."""
    mapper = sa.inspect(cls)
    while mapper.single and mapper.inherits is not None:
        mapper = mapper.inherits
    return mapper.class_


def select_models(classes: Sequence[type], names: Sequence[str] | None = None) -> list[type]:
    """The versioned models among `classes` (or the `names`d ones, checked names as an
    `ImportRequest` holds them), in name order."""
    versioned = {c.__name__: c for c in classes if is_versioned(c)}
    if names is None:
        return [versioned[n] for n in sorted(versioned)]
    chosen: list[type] = []
    for name in names:
        if name not in versioned:
            raise NotFoundError(
                f"unknown versioned model {name!r}; valid names: "
                f"{', '.join(sorted(versioned)) or '(none configured)'}"
            )
        if versioned[name] not in chosen:
            chosen.append(versioned[name])
    return chosen


def _association_units(cls: type) -> list[AssociationVersions]:
    manager = get_versioning_manager(cls)
    units = []
    for prop in sa.inspect(cls).relationships:
        table = prop.secondary
        if table is None or prop.viewonly or table not in manager.association_tables:
            continue
        if manager.is_excluded_property(cls, prop.key):
            continue
        name = manager.options["table_name"] % table.name
        schema = table.schema or table.metadata.schema
        versions = table.metadata.tables.get(f"{schema}.{name}" if schema else name)
        if versions is not None:
            units.append(AssociationVersions(table, versions, prop, manager))
    return units


def _refuse_units(classes: Sequence[type], units: Sequence[Unit]) -> None:
    """Refuse, naming model and feature, the units whose Continuum set-up the import
    cannot reproduce; the error names the models that can be imported by name."""
    refused = {unit.name: found for unit in units if (found := unit.unsupported())}
    if not refused:
        return
    detail = "; ".join(f"{name}: {', '.join(found)}" for name, found in refused.items())
    others = sorted(
        {c.__name__ for c in classes if is_versioned(c)}
        - {c.__name__ for u in units if u.name in refused for c in u.classes}
        - set(refused)
    )
    raise UnsupportedVersioning(
        f"the version import cannot reproduce what Continuum writes for {detail}; "
        "nothing was imported"
        + (f" (other models can be imported by name: {', '.join(others)})" if others else "")
    )


def plan_units(
    classes: Sequence[type], names: Sequence[str] | None, dialect: sa.Dialect
) -> list[Unit]:
    """The units a run imports, parents first (foreign keys), each once; refuses, naming
    model and feature, any unit whose Continuum set-up the import cannot reproduce (a
    plugin: every model, see `refuse_plugins`)."""
    models = select_models(classes, names)
    refuse_plugins(classes, models)
    units: dict[Any, Unit] = {}
    for cls in models:
        owner = _table_owner(cls)
        if owner not in units:
            units[owner] = VersionModel(owner, dialect)
        for assoc in _association_units(owner):
            units.setdefault(assoc.live, assoc)
    _refuse_units(classes, list(units.values()))
    by_table = {u.anchor: u for u in sorted(units.values(), key=lambda u: u.name)}
    return [by_table[t] for t in sa.sql.util.sort_tables(list(by_table))]
