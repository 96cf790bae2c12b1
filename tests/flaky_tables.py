"""Cached tables for worker tests that need a task to retry (CACHEWORK_CACHED_TABLES).

`categories` is the demo's. `flaky` reads the same rows, but a lookup of a key raises a
TransientError (the task retries with its backoff) while the key's counter file, next to
the SQLite database, says failures are left: `arm(database_file, code, failures)`. The
counter lives in a file so every worker child sees it.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from cachework.cache.tables.full_table import FullTableCache
from cachework.errors import TransientError
from demo.cached_tables import categories
from demo.models import Category


def _counter(database_file: str | Path, key: object) -> Path:
    return Path(database_file).parent / f"flaky-{key}.count"


def arm(database_file: str | Path, key: object, failures: int) -> None:
    """The next `failures` lookups of `key` in `flaky` fail with a TransientError."""
    _counter(database_file, key).write_text(str(failures))


def failures_left(database_file: str | Path, key: object) -> int:
    path = _counter(database_file, key)
    return int(path.read_text()) if path.exists() else 0


class FlakyTable(FullTableCache):
    def get(self, key):
        path = _counter(self._database_file, key)
        if path.exists():
            left = int(path.read_text() or 0)
            if left > 0:
                path.write_text(str(left - 1))
                raise TransientError(f"flaky: {left} failure(s) left for {key!r}")
        return super().get(key)


def flaky(engine: sa.Engine) -> FlakyTable:
    table = FlakyTable(engine, Category, key_column="code", name="flaky")
    table._database_file = engine.url.database
    return table


CACHED_TABLES = {"categories": categories, "flaky": flaky}
