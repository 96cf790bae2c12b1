"""cachework's public API for an app's own code, in one namespaced place.

A web app, the app's own Celery workers and its scripts import from here, never from a
generic top-level name it may have itself (`tasks`, `worker`, `cache`, `celeryconfig`):

    from cachework.api import enable, publish, store, aio, start_runtime

What is here, and where it lives:

- processes: `enable(Session)` (track the app's writes in this process and every process
  forked from it), `start_runtime()` / `Runtime` (one per process), `runtime_lifespan()`
  (an asyncio app's lifespan), `jobs` (a job run in-process), `load_settings`;
- invalidation: `publish`, `publish_event`, `track`, `RedisLog`, `DatabaseLog`;
- project cache items: `store` (`get_item`, `get_project_items`, `set_item`, ...),
  `CacheItem`, `ItemWriter` (what a cache plugin's `update_cache` gets), `reads` (what
  a plugin's items read, in its `depends_on`) and `freshness` (an item's built-at time
  and whether a rebuild is pending);
- cached tables: `CachedTable` over a `SelectSource`, `FullTableCache`, and their indexes
  (`PrimaryKey`, `Unique`, `NonUnique`, `Range`, `Spec`);
- asyncio: `aio` (the same names, awaited);
- errors: `CacheworkError` and its kinds, also importable alone, cheaply, from
  `cachework.errors` (what a Celery client imports to catch them by type).

Importing this imports SQLAlchemy and redis-py, never Celery: a web process needs only
cachework's base install (`pip install cachework`), the worker its `[worker]` extra.
"""

from cachework.cache import aio
from cachework.cache.invalidation import (
    DatabaseLog,
    RedisLog,
    Tracking,
    publish,
    publish_event,
    track,
)
from cachework.cache.items import store
from cachework.cache.items.changes import Freshness, freshness
from cachework.cache.items.plugins import ItemWriter
from cachework.cache.items.reads import Reads, reads
from cachework.cache.items.store import CacheItem
from cachework.cache.tables.full_table import FullTableCache
from cachework.cache.tables.indexes import NonUnique, PrimaryKey, Range, Spec, Unique
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable
from cachework.errors import (
    CacheworkError,
    ConfigError,
    LockedError,
    NotFoundError,
    PermanentError,
    TooLargeError,
    TransientError,
    ValidationError,
)
from cachework.settings import Settings, load_settings
from cachework.worker import jobs
from cachework.worker.app_processes import enable
from cachework.worker.runtime import Runtime, runtime_lifespan, start_runtime

__all__ = [
    "CacheItem",
    "CachedTable",
    "CacheworkError",
    "ConfigError",
    "DatabaseLog",
    "Freshness",
    "FullTableCache",
    "ItemWriter",
    "LockedError",
    "NonUnique",
    "NotFoundError",
    "PermanentError",
    "PrimaryKey",
    "Range",
    "Reads",
    "RedisLog",
    "Runtime",
    "SelectSource",
    "Settings",
    "Spec",
    "TooLargeError",
    "Tracking",
    "TransientError",
    "Unique",
    "ValidationError",
    "aio",
    "enable",
    "freshness",
    "jobs",
    "load_settings",
    "publish",
    "publish_event",
    "reads",
    "runtime_lifespan",
    "start_runtime",
    "store",
    "track",
]
