"""The cache plugin protocol and plugin discovery.

An app that wants project cache items provides a plugin: an `app_name` and
`update_cache(store, session, project=None, name=None)`, which computes the items of ONE
scope (a project, or the site-wide items when `project` is None — never "all projects")
and hands them to `store.set_item(name, data)`. The framework owns locking, transactions,
iteration over projects and error capture; `store` buffers the items and writes them only
if the plugin returns, so a failing plugin leaves no partial item behind.

Plugins are found through the entry-point group `cachework.cache_plugins` and through the
configured model modules, which may name plugins in a `CACHE_PLUGINS` list of
"module:attribute" strings (plain strings, so importing a model module has no side effect).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.orm import Session

from cachework.cache.items.store import DEFAULT_MAX_BYTES, encode, validate_name
from cachework.errors import ConfigError, NotFoundError, ValidationError, shown

ENTRY_POINT_GROUP = "cachework.cache_plugins"
MODULE_ATTRIBUTE = "CACHE_PLUGINS"


class ItemWriter:
    """The `store` a plugin writes to: bound to one app and one scope, buffered.

    Items are validated (JSON, size) as they are set, so the error names the item and the
    plugin's rebuild fails before anything reaches the database.
    """

    def __init__(
        self,
        app_name: str,
        project: str | None,
        user: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.app_name = app_name
        self.project = project
        self.user = user
        self.max_bytes = max_bytes
        self.items: dict[str, Any] = {}

    def set_item(self, name: str, data: Any) -> None:
        validate_name("name", name)
        encode(self.project, self.app_name, name, data, self.max_bytes)
        self.items[name] = data

    def rows(self) -> list[dict]:
        return [
            {
                "project": self.project,
                "app_name": self.app_name,
                "name": name,
                "data": data,
                "user": self.user,
            }
            for name, data in self.items.items()
        ]


@runtime_checkable
class CachePlugin(Protocol):
    """What an app implements. `item_names` is optional: when present, requested names
    are checked against it."""

    app_name: str

    def update_cache(
        self,
        store: ItemWriter,
        session: Session,
        project: str | None = None,
        name: str | None = None,
    ) -> None: ...


def _load(reference: str, source: str) -> CachePlugin:
    module_name, _, attribute = reference.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cache plugin {reference!r} from {source} cannot be loaded: {exc}"
        ) from None
    plugin = obj() if inspect.isclass(obj) else obj
    if not isinstance(plugin, CachePlugin) or not isinstance(plugin.app_name, str):
        raise ConfigError(
            f"cache plugin {reference!r} from {source} has no `app_name` string and "
            "`update_cache(store, session, project=None, name=None)`"
        )
    return plugin


def _add(found: dict[str, CachePlugin], plugin: CachePlugin, reference: str) -> None:
    previous = found.get(plugin.app_name)
    if previous is None:
        found[plugin.app_name] = plugin
    elif type(previous) is not type(plugin):
        raise ConfigError(
            f"two cache plugins claim app {plugin.app_name!r}: "
            f"{type(previous).__module__}.{type(previous).__qualname__} and {reference}"
        )


def discover(
    model_modules: Iterable[str | ModuleType] = (),
    entry_point_group: str | None = ENTRY_POINT_GROUP,
) -> dict[str, CachePlugin]:
    """Plugins by app name, from the entry points and the model modules' `CACHE_PLUGINS`.

    The same class named in both places counts once; two classes for one app name are a
    ConfigError.
    """
    found: dict[str, CachePlugin] = {}
    if entry_point_group:
        for point in entry_points(group=entry_point_group):
            _add(found, _load(point.value, f"entry point {point.name!r}"), point.value)
    for module in model_modules:
        if isinstance(module, str):
            module = importlib.import_module(module)
        for reference in getattr(module, MODULE_ATTRIBUTE, ()):
            _add(found, _load(reference, f"{module.__name__}.{MODULE_ATTRIBUTE}"), reference)
    return dict(sorted(found.items()))


def select(plugins: dict[str, CachePlugin], app_name: str | None) -> list[CachePlugin]:
    """The plugins a job covers: all, or the named one (NotFoundError listing the valid)."""
    if app_name is None:
        return list(plugins.values())
    if app_name not in plugins:
        valid = ", ".join(plugins) or "none registered"
        raise NotFoundError(f"app_name={shown(app_name)} has no cache plugin (known apps: {valid})")
    return [plugins[app_name]]


def check_names(plugins: list[CachePlugin], names: list[str] | None) -> list[str] | None:
    """Validate requested item names against the plugins that declare `item_names`."""
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ValidationError(f"names={shown(names)} must be a list of item names or None")
    names = [validate_name("name", n) for n in names]
    declared = [p for p in plugins if getattr(p, "item_names", None) is not None]
    if declared and len(declared) == len(plugins):
        known = sorted({n for p in declared for n in p.item_names})
        unknown = [n for n in names if n not in known]
        if unknown:
            raise NotFoundError(
                f"item name(s) {', '.join(map(repr, unknown))} unknown (known: {', '.join(known)})"
            )
    return names
