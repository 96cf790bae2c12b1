"""What a project cache item reads, declared by its plugin, so that a committed change
rebuilds exactly the items it affects (data-driven rebuilds).

A plugin says, per item name (or "*": every item of the app), which tables the item reads
and how a row of each maps to the projects it belongs to:

    from cachework.api import reads

    class InventoryPlugin:
        app_name = "inventory"
        depends_on = {  # project items
            "summary": [reads("products", project="project_uuid")],
            "stock": [reads("moves", project="product_id.project_uuid")],  # a join
            "by_category": [reads("products", project="project_uuid"), reads("categories")],
        }
        site_depends_on = {"totals": [reads("products")]}  # site-wide items

`project` is a path of columns from the table to the projects table (CACHEWORK_PROJECTS):
each column but the last is a foreign key the path follows; the path ends at the projects
table, on the column the last foreign key references (or, for the projects table itself,
on any of its columns). No `project`: the item depends on the whole table, and any change
to it rebuilds the item of every project (`depends_on`) or the site-wide item
(`site_depends_on`).

With no projects table (CACHEWORK_PROJECTS=off) there is no project item to rebuild: only
`site_depends_on` is followed (the tables `depends_on` names are still checked).

`check` resolves every declaration against the models once, at start-up: an unknown table,
column, a column with no foreign key to follow, or a path that does not reach the
projects table is one ConfigError line. The result (`ItemReads`) gives the tracked
dependencies (`dependencies`: one virtual cached-table name per table and first column,
so the writer's transaction writes its outbox row exactly as for a cached table) and maps
a logged event of one of them to the (project, app, item) scopes it touches (`scopes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework.cache.invalidation.dependencies import Dependency
from cachework.cache.invalidation.events import Event
from cachework.cache.items.locks import ALL
from cachework.cache.items.projects import ProjectSource
from cachework.errors import ConfigError, ValidationError
from cachework.records import coerce

PREFIX = "@items:"  # virtual cached-table names: '@' starts no table name cachework serves
DECLARATIONS = {"depends_on": False, "site_depends_on": True}  # attribute -> site-wide


@dataclass(frozen=True)
class Reads:
    """One table an item reads; `project` the column path to the projects table, or None
    (the whole table)."""

    table: str
    project: str | None = None


def reads(table: str, project: str | None = None) -> Reads:
    """Declare that an item reads `table`; `project`: the path of columns from it to the
    projects table (`"project_id"`, or through foreign keys `"product_id.project_id"`)."""
    return Reads(table, project)


@dataclass(frozen=True)
class Route:
    """A declared read, resolved against the models: written rows of `base` name the
    values of `column` (None: the whole table), which `project_keys` maps to projects."""

    base: str
    column: str | None
    anchor: sa.Column | None = field(default=None, compare=False)  # what the values are
    joins: tuple[tuple[sa.Column, sa.Column], ...] = field(default=(), compare=False)

    @property
    def virtual(self) -> str:
        return PREFIX + self.base + ("" if self.column is None else f".{self.column}")


@dataclass(frozen=True)
class Use:
    """An item that depends on a route: the app, the item name ('*': all), site-wide or not."""

    app_name: str
    name: str
    site_wide: bool


Scope = tuple[str | None, str, str]  # (project key or None for site-wide, app, item name)


@dataclass
class ItemReads:
    """Every plugin's declared reads, resolved: virtual name -> route and its users."""

    projects: ProjectSource
    routes: dict[str, Route] = field(default_factory=dict)
    uses: dict[str, list[Use]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.routes)

    def dependencies(self) -> list[Dependency]:
        """The tracked dependencies that carry item changes (outbox rows, triggers)."""
        return [Dependency(name, r.base, r.column) for name, r in self.routes.items()]

    def items(self) -> list[tuple[str, str, bool]]:
        """(app, item name, site-wide) of every declared item."""
        return sorted({(u.app_name, u.name, u.site_wide) for us in self.uses.values() for u in us})

    def every_scope(self, session: Session) -> set[Scope]:
        """Every declared item of every project, and the site-wide ones (what a log that
        lost entries may have touched)."""
        every: list[str] | None = None
        found: set[Scope] = set()
        for app_name, name, site_wide in self.items():
            if site_wide:
                found.add((None, app_name, name))
                continue
            if every is None:
                every = self.projects.list(session)
            found.update((p, app_name, name) for p in every)
        return found

    def scopes(self, session: Session, events: Iterable[Event]) -> set[Scope]:
        """The scopes the events touch (events of other tables are not item changes).

        An event with no keys (a whole-table write, or over the key limit) touches every
        project; so do keys that no longer lead to a project (the row on the path was
        deleted since): never a missed rebuild, at the cost of extra ones."""
        every: list[str] | None = None
        found: set[Scope] = set()
        for event in events:
            route = self.routes.get(event.table)
            if route is None:
                continue
            projects: Iterable[str] | None = None
            if route.column is not None and event.keys is not None:
                projects = self._project_keys(session, route, event.keys)
            for use in self.uses[event.table]:
                if use.site_wide:
                    found.add((None, use.app_name, use.name))
                    continue
                if projects is None:
                    if every is None:
                        every = self.projects.list(session)
                    projects = every
                found.update((p, use.app_name, use.name) for p in projects)
        return found

    def _project_keys(self, session: Session, route: Route, keys: tuple) -> list[str] | None:
        """The canonical keys of the projects the values lead to; None: every project (a
        value that leads to no project any more: the row on the path was deleted since,
        and its project cannot be told)."""
        key_column = self.projects.model_column
        if route.anchor is key_column:
            values: Iterable = keys
        else:
            wanted = {_coerce(route.anchor, key) for key in keys}
            query = sa.select(route.anchor, key_column).select_from(route.anchor.table)
            for fk_column, referenced in route.joins:
                query = query.join(referenced.table, fk_column == referenced)
            rows = session.execute(query.where(route.anchor.in_(wanted))).all()
            if {row[0] for row in rows} != wanted:
                return None
            values = [row[1] for row in rows]
        out: dict[str, None] = {}
        for value in values:
            try:
                out[self.projects.canonical(value)] = None
            except ValidationError:
                return None  # not a key of the projects table: rebuild every project
        return list(out)


def _coerce(column: sa.Column, key: Any) -> Any:
    """An event key (its JSON form) as the column's Python type (uuid, int...)."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = None
    try:
        return coerce(key, python_type, column.name)
    except ValidationError:
        return key  # the comparison then finds no row: every project is rebuilt


# --- checking declarations against the models ---------------------------------------------


def declares(plugins: Mapping[str, Any]) -> bool:
    """Whether any plugin declares what its items read."""
    return any(
        getattr(plugin, attribute, None) is not None
        for plugin in plugins.values()
        for attribute in DECLARATIONS
    )


def check(
    plugins: Mapping[str, Any], metadatas: Iterable[sa.MetaData], projects: ProjectSource
) -> ItemReads:
    """Resolve every plugin's `depends_on` and `site_depends_on`; ConfigError, one line
    naming the plugin, the item and the bad part, when one does not fit the models."""
    tables = _tables(metadatas)
    found = ItemReads(projects)
    for app_name, plugin in plugins.items():
        for attribute, site_wide in DECLARATIONS.items():
            declared = getattr(plugin, attribute, None)
            if declared is None:
                continue
            where = f"cache plugin {app_name!r} {attribute}"
            if not isinstance(declared, Mapping):
                raise ConfigError(f"{where} must be a dict of item name -> [reads(...)]")
            known = getattr(plugin, "item_names", None)
            for name, declared_reads in declared.items():
                if (
                    not isinstance(name, str)
                    or not name
                    or (known is not None and name != ALL and name not in known)
                ):
                    valid = ", ".join(map(repr, [*(known or ()), ALL]))
                    raise ConfigError(f"{where}: {name!r} is not an item name ({valid})")
                if isinstance(declared_reads, Reads | str):
                    declared_reads = [declared_reads]
                for entry in declared_reads:
                    label = f"{where}[{name!r}]"
                    if not site_wide and not projects.enabled:
                        _resolve(label, _whole(label, entry), tables, projects, site_wide)
                        continue  # CACHEWORK_PROJECTS=off: no project item to rebuild
                    route = _resolve(label, entry, tables, projects, site_wide)
                    found.routes.setdefault(route.virtual, route)
                    uses = found.uses.setdefault(route.virtual, [])
                    use = Use(app_name, name, site_wide)
                    if use not in uses:
                        uses.append(use)
    return found


def _whole(where: str, entry: object) -> Reads:
    """`entry` as a read of its whole table (its table is still checked)."""
    if isinstance(entry, Reads):
        return Reads(entry.table)
    if isinstance(entry, str):
        return Reads(entry)
    raise ConfigError(f"{where}: {entry!r} is not reads(table, project=...)")


def _tables(metadatas: Iterable[sa.MetaData]) -> dict[str, sa.Table]:
    tables: dict[str, sa.Table] = {}
    for metadata in metadatas:
        tables.update(metadata.tables)
    return tables


def _resolve(
    where: str, entry: object, tables: dict[str, sa.Table], projects: ProjectSource, site: bool
) -> Route:
    if isinstance(entry, str):
        entry = Reads(entry)
    if not isinstance(entry, Reads):
        raise ConfigError(f"{where}: {entry!r} is not reads(table, project=...)")
    table = tables.get(entry.table)
    if table is None:
        known = ", ".join(sorted(tables)[:20]) or "none"
        raise ConfigError(f"{where}: table {entry.table!r} is not in the models (known: {known})")
    if entry.project is None:
        return Route(table.fullname, None)
    if site:
        raise ConfigError(
            f"{where}: a site-wide item depends on the whole table: reads({entry.table!r}) "
            f"without project={entry.project!r}"
        )
    target = projects.model_column
    if target is None:
        raise ConfigError(
            f"{where}: project={entry.project!r} needs the projects table "
            f"({projects.label}) among the models"
        )
    path = entry.project.split(".")
    current, joins, anchor = table, [], None
    for index, name in enumerate(path):
        column = current.c.get(name)
        if column is None:
            raise ConfigError(f"{where}: {current.fullname} has no column {name!r}")
        last = index == len(path) - 1
        if current is target.table:
            if not last:
                raise ConfigError(
                    f"{where}: project={entry.project!r} reaches the projects table "
                    f"{current.fullname} at {name!r}; nothing may follow"
                )
            anchor = anchor if anchor is not None else column
            break
        keys = list(column.foreign_keys)
        if len(keys) != 1:
            raise ConfigError(
                f"{where}: {current.fullname}.{name} has {len(keys) or 'no'} foreign keys; "
                "each column of project= but the last on the projects table follows one"
            )
        referenced = keys[0].column
        if anchor is None:
            anchor = referenced  # the values of the first column are the referenced column's
        else:
            joins.append((column, referenced))
        current = referenced.table
        if last and current is not target.table:
            raise ConfigError(
                f"{where}: project={entry.project!r} ends at {current.fullname}, not at the "
                f"projects table {target.table.fullname} ({projects.label})"
            )
    return Route(table.fullname, path[0], anchor, tuple(joins))
