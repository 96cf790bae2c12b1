"""Cached tables: records of a slow source served from per-process storage through
indexes, refreshed lazily after an invalidation (`CachedTable`, `FullTableCache`, the
per-process `Registry`)."""
