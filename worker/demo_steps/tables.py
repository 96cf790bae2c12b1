"""Demo step: categories read through each worker child's cached table."""

from __future__ import annotations

from cachework.errors import CacheworkError
from cachework.worker import routing


def run(ctx) -> None:
    ctx.console.rule("cached tables: categories by id")
    for key in ("1", 2):
        record = ctx.call(routing.LOOKUP, table="categories", key=key)
        ctx.console.print(f"  lookup categories {key!r} -> {record}")
    missing = ctx.call(routing.LOOKUP, table="categories", key=999)
    ctx.console.print(f"  lookup categories 999 -> {missing}")
    try:
        ctx.call(routing.LOOKUP, table="categories", key="abc")
    except CacheworkError as exc:
        ctx.console.print(f"  lookup categories 'abc' -> [red]{type(exc).__name__}: {exc}[/red]")
    status = ctx.call(routing.CACHE_STATUS)
    table = status["tables"]["categories"]
    ctx.console.print(
        f"  cache_status of child {status['pid']}: cursor {status['cursor']}, categories "
        f"loaded={table['loaded']} records={table['records']} hits={table['hits']} "
        f"misses={table['misses']} refreshes={table['refreshes']}"
    )
