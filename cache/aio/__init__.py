"""cachework for asyncio apps (FastAPI, Starlette, any `AsyncSession`): the same names as
the sync API, awaited, as `redis.asyncio` and `sqlalchemy.ext.asyncio` do.

    from cachework.cache import aio
    item = await aio.get_item(async_session, "inventory", "summary", project=key)
    await aio.publish("categories", [3], session=async_session)   # in its transaction
    category = await aio.table(runtime, "categories").get(3)      # never blocks the loop
    await aio.wait_for(runtime, event_id)                         # read barrier

The rules are the sync functions' own: project items run `cachework.cache.items.store` through the
session (`run_sync`); publish checks the event with the same `validate_event` and writes
the same outbox row; cached-table reads that memory answers return on the loop, and the
rest (a load, a refresh, a source read) run in the runtime's threads (`aio_threads`), one
refresh shared by the loop's readers. Tracking an async app's writes:
`cachework.cache.invalidation.track` takes an `async_sessionmaker`; the runtime for an app's
lifespan: `cachework.worker.runtime.runtime_lifespan`.
"""

from cachework.cache.aio.invalidation import publish, publish_event, wait_for
from cachework.cache.aio.items import (
    delete_items,
    freshness,
    get_item,
    get_project_items,
    get_update_time,
    set_item,
    set_items,
)
from cachework.cache.aio.tables import AsyncTable, table

__all__ = [
    "AsyncTable",
    "delete_items",
    "freshness",
    "get_item",
    "get_project_items",
    "get_update_time",
    "publish",
    "publish_event",
    "set_item",
    "set_items",
    "table",
    "wait_for",
]
