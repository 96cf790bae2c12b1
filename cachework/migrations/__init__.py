"""Alembic migrations of cachework's own tables (never the app's): see `cachework.migrate`.

`env.py` and `versions/` are read by Alembic through `cachework.migrate.config()`; the
version is kept in `cachework_alembic_version`, so an app that uses Alembic for its own
tables keeps its `alembic_version` to itself.
"""
