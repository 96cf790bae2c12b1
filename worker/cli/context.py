"""The runtime a CLI command runs its job with, in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cachework.migrate import check_schema
from cachework.settings import load_settings
from cachework.worker.checks import check_database
from cachework.worker.runtime import Runtime


@contextmanager
def cli_runtime(*, schema: bool = True) -> Iterator[Runtime]:
    """A runtime from the environment, closed (connections and threads) when done.

    With `schema` (all but `initdb` and `db`), a database whose cachework tables are
    behind (or missing) stops the command with one line naming the command to run."""
    runtime = Runtime(load_settings())
    try:
        if schema:
            check_database(runtime.database.engine)
            check_schema(runtime.database.engine)
        yield runtime
    finally:
        runtime.close()
