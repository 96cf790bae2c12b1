"""The runtime a CLI command runs its job with, in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cache.runtime import Runtime
from cache.settings import load_settings


@contextmanager
def cli_runtime() -> Iterator[Runtime]:
    """A runtime from the environment, closed (connections and threads) when done."""
    runtime = Runtime(load_settings())
    try:
        yield runtime
    finally:
        runtime.close()
