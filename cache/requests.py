"""Typed requests of the project cache and invalidation jobs, checked once at the edge.

A task or a CLI command turns its plain arguments into a request with `parse`: a
ValidationError or NotFoundError names the bad value before anything runs. The request
is then passed down and trusted: `cachework.worker.jobs` never checks it again.

`parse` takes what it checks against as plain values and callables (the plugins, a
project check, the known tables), so it runs without a database; `cachework.worker.jobs` binds them
to a runtime with one session (`jobs.sync_request`, `jobs.delete_request`,
`jobs.invalidation_request`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cachework.cache.invalidation.events import Event, KnownTables, validate_event
from cachework.cache.items.plugins import CachePlugin, check_names, select
from cachework.cache.items.store import validate_user
from cachework.errors import NotFoundError, ValidationError, shown
from cachework.records import json_value

# A project argument -> the canonical key of an existing project, None for the site-wide
# scope (`ProjectSource.check` bound to a session); raises naming a bad or unknown one.
ProjectCheck = Callable[[object], str | None]
Plugins = Mapping[str, CachePlugin]


def item_names(name: object) -> list[str] | None:
    """A task's single `name` argument as the list of names a request takes."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValidationError(f"name={shown(name)} must be an item name (string) or None")
    return [name]


def _app_name(app_name: object) -> str | None:
    if app_name is not None and not isinstance(app_name, str):
        raise ValidationError(f"app_name={shown(app_name)} must be a string or None")
    return app_name


@dataclass(frozen=True)
class SyncRequest:
    """Rebuild the items of `project` (None: every project and the site-wide items) of
    `app_name` (None: every app), `names` (None: every item), recording `user`."""

    project: str | None = None
    app_name: str | None = None
    names: tuple[str, ...] | None = None
    user: str | None = None

    @classmethod
    def parse(
        cls,
        project: object = None,
        app_name: object = None,
        names: object = None,
        user: object = None,
        *,
        plugins: Plugins,
        check_project: ProjectCheck,
    ) -> SyncRequest:
        """Check every argument (the app has a plugin, the names are its items, the
        project exists); `project` comes back canonical."""
        app_name = _app_name(app_name)
        user = validate_user(user)
        checked = check_names(select(plugins, app_name), names)
        return cls(
            check_project(project),
            app_name,
            tuple(checked) if checked is not None else None,
            user,
        )

    @property
    def name_list(self) -> list[str] | None:
        """`names` as the list the rebuild takes."""
        return list(self.names) if self.names is not None else None

    def plugins(self, plugins: Plugins) -> list[CachePlugin]:
        """The plugins the request covers (its app was checked when it was parsed)."""
        return select(plugins, self.app_name)


@dataclass(frozen=True)
class DeleteRequest:
    """Delete the items of `project` and/or `app_name` (None: any)."""

    project: str | None = None
    app_name: str | None = None

    @classmethod
    def parse(
        cls,
        project: object = None,
        app_name: object = None,
        *,
        plugins: Plugins,
        check_project: ProjectCheck,
        stored_apps: Callable[[], Iterable[str]],
    ) -> DeleteRequest:
        """Check the arguments. A project or app that no longer exists but still has
        items is accepted (`check_project` allowing orphans; `stored_apps`: the app
        names that have items), so leftovers can be removed."""
        app_name = _app_name(app_name)
        project = check_project(project)
        if app_name is not None and app_name not in plugins:
            known = sorted(set(plugins) | set(stored_apps()))
            if app_name not in known:
                raise NotFoundError(
                    f"app_name={shown(app_name)} has no cache plugin and no items "
                    f"(known apps: {', '.join(known) or 'none'})"
                )
        return cls(project, app_name)


@dataclass(frozen=True)
class InvalidationRequest:
    """Publish `event` to every process's cached tables and rebuild the items of `sync`
    (None when the event names no project, app or item names)."""

    event: Event
    sync: SyncRequest | None = None

    @classmethod
    def parse(
        cls,
        table: object,
        keys: object = None,
        project: object = None,
        app_name: object = None,
        names: object = None,
        *,
        known_tables: KnownTables | None,
        max_keys: int,
        plugins: Plugins,
        check_project: ProjectCheck,
    ) -> InvalidationRequest:
        """Check the event (known table, keys coerced to its key type) and, when it names
        a scope, the rebuild of that scope."""
        event = validate_event(
            table,
            keys,
            project,
            app_name,
            names,
            known_tables=known_tables,
            max_keys=max_keys,
        )
        if event.project is None and event.app_name is None and event.names is None:
            return cls(event)
        names_list = list(event.names) if event.names is not None else None
        sync = SyncRequest.parse(
            event.project,
            event.app_name,
            names_list,
            plugins=plugins,
            check_project=check_project,
        )
        return cls(event, sync)

    def task_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `cachework.process_invalidation` (JSON values)."""
        event = self.event
        return {
            "table": event.table,
            "keys": [json_value(k) for k in event.keys] if event.keys is not None else None,
            "project": event.project,
            "app_name": event.app_name,
            "names": list(event.names) if event.names is not None else None,
        }
