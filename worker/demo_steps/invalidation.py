"""Demo step: a category read through both worker children, changed with plain SQL behind
the cache's back, invalidated once, and read fresh again by both children."""

from __future__ import annotations

import sqlalchemy as sa

from cachework.worker import routing

KEY = 1


def _burst(ctx, name: str, count: int, **kwargs) -> list:
    pending = [ctx.app.send_task(name, kwargs=kwargs) for _ in range(count)]
    return [p.get(timeout=60, interval=0.05) for p in pending]


def _children(ctx, want: int = 2, rounds: int = 8) -> dict[int, dict]:
    """cache_status of each child (bursts until `want` distinct pids answered)."""
    seen: dict[int, dict] = {}
    for _ in range(rounds):
        for status in _burst(ctx, routing.CACHE_STATUS, 4):
            seen[status["pid"]] = status
        if len(seen) >= want:
            break
    return seen


def _read_everywhere(ctx, label: str, rounds: int = 8) -> None:
    """Lookups until both children hold the table (bounded), then each child's stats."""
    names: set[str] = set()
    for _ in range(rounds):
        lookups = _burst(ctx, routing.LOOKUP, 6, table="categories", key=KEY)
        names |= {r["name"] for r in lookups}
        children = _children(ctx)
        if all(s["tables"]["categories"]["loaded"] for s in children.values()):
            break
    ctx.console.print(f"  {label}: cachework.lookup(categories, {KEY}) -> name {sorted(names)}")
    for pid, status in sorted(children.items()):
        table = status["tables"]["categories"]
        ctx.console.print(
            f"    child {pid}: cursor {status['cursor']}, categories loaded={table['loaded']} "
            f"hits={table['hits']} misses={table['misses']} refreshes={table['refreshes']}",
            highlight=False,
        )


def run(ctx) -> None:
    ctx.console.rule("invalidation reaches every worker process")
    _read_everywhere(ctx, "cached")
    with ctx.database.session() as session:
        old = session.execute(sa.text("SELECT name FROM categories WHERE id = :k"), {"k": KEY})
        new_name = f"{old.scalar_one()} (renamed)"
        session.execute(
            sa.text("UPDATE categories SET name = :n WHERE id = :k"), {"n": new_name, "k": KEY}
        )
    ctx.console.print(f"  plain SQL: UPDATE categories SET name = {new_name!r} WHERE id = {KEY}")
    _read_everywhere(ctx, "not yet told (the cache still serves its copy)")
    result = ctx.call(routing.PROCESS_INVALIDATION, table="categories", keys=[KEY])
    ctx.console.print(f"  cachework.process_invalidation -> {result}")
    _read_everywhere(ctx, "after the invalidation")
