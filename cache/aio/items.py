"""Project cache items through an `AsyncSession`: `cachework.cache.items.store`'s functions,
awaited.

Each runs the store's own function on the session's connection (`AsyncSession.run_sync`),
so the rules (validation, upserts that always move `updated_at`, site-wide items) are the
store's, and the caller owns the transaction as with a sync Session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cachework.cache.items import changes, store
from cachework.cache.items.changes import Freshness
from cachework.cache.items.store import DEFAULT_MAX_BYTES, CacheItem
from cachework.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


def _async(session: Any, what: str) -> AsyncSession:
    if not callable(getattr(session, "run_sync", None)):
        raise ConfigError(
            f"cachework.cache.aio.{what} needs an AsyncSession, not {session!r} "
            f"(with a Session, call cachework.cache.items.store.{what})"
        )
    return session


async def get_item(
    session: AsyncSession, app_name: str, name: str, project: Any = None
) -> CacheItem | None:
    """The item, or None (`project=None`: the site-wide item, never a project's)."""
    return await _async(session, "get_item").run_sync(store.get_item, app_name, name, project)


async def freshness(
    session: AsyncSession, app_name: str, name: str, project: Any = None
) -> Freshness:
    """How fresh the item is: built-at time, a rebuild pending, the last change seen."""
    return await _async(session, "freshness").run_sync(changes.freshness, app_name, name, project)


async def get_update_time(
    session: AsyncSession, app_name: str, name: str, project: Any = None
) -> datetime | None:
    """When the item was last written (UTC-aware), or None."""
    run = _async(session, "get_update_time").run_sync
    return await run(store.get_update_time, app_name, name, project)


async def get_project_items(
    session: AsyncSession, project: Any, app_name: str | None = None
) -> list[CacheItem]:
    """All items of one project (None: the site-wide items), optionally of one app."""
    run = _async(session, "get_project_items").run_sync
    return await run(store.get_project_items, project, app_name)


async def set_item(
    session: AsyncSession,
    app_name: str,
    name: str,
    data: Any,
    project: Any = None,
    user: str | None = None,
    data_type: str = "json",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Create or replace one item in the session's transaction."""
    await _async(session, "set_item").run_sync(
        store.set_item, app_name, name, data, project, user, data_type, max_bytes
    )


async def set_items(
    session: AsyncSession,
    items: Iterable[Mapping[str, Any]],
    user: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> int:
    """Create or replace many items (all validated before the first statement)."""
    items = list(items)  # an async caller's generator is consumed here, not in the greenlet
    return await _async(session, "set_items").run_sync(store.set_items, items, user, max_bytes)


async def delete_items(
    session: AsyncSession,
    project: Any = None,
    app_name: str | None = None,
    name: str | None = None,
    *,
    site_wide: bool = False,
) -> int:
    """Delete the matching items (None means any); returns the count."""
    run = _async(session, "delete_items").run_sync
    return await run(store.delete_items, project, app_name, name, site_wide=site_wide)
