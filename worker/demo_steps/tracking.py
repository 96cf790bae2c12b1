"""Demo step: automatic invalidation. The app's session factory is tracked with one call;
an ORM write and a bulk ORM update then reach both worker children with no publish()
call, and the writing process reads its own write at once. Raw SQL needs the PostgreSQL
triggers (`cachework triggers install`); the demo runs on SQLite, so that part is shown
only where PostgreSQL is configured."""

from __future__ import annotations

import time

import sqlalchemy as sa

from cachework.cache.invalidation import track
from cachework.worker import routing
from cachework.worker.runtime import Runtime

KEY = 2


def _every_child_reads(ctx, expect: str, timeout: float = 30.0) -> set[int]:
    """Lookups (sent after the commit) until two children answered `expect` (bounded)."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        lookups = [
            ctx.app.send_task(routing.LOOKUP, kwargs={"table": "categories", "key": KEY})
            for _ in range(6)
        ]
        statuses = [ctx.app.send_task(routing.CACHE_STATUS) for _ in range(6)]
        names = {p.get(timeout=30, interval=0.02)["name"] for p in lookups}
        pids = {s.get(timeout=30, interval=0.02)["pid"] for s in statuses}
        if names == {expect}:
            seen |= pids
            if len(seen) >= 2:
                return seen
        time.sleep(0.05)
    raise RuntimeError(f"not every child reads {expect!r} within {timeout}s (seen {seen})")


def run(ctx) -> None:
    ctx.console.rule("automatic invalidation: the app's own writes, no publish()")
    from demo.models import Category

    runtime = Runtime(ctx.settings, database=ctx.database).start()  # as a web app does
    tracking = track(ctx.database.sessionmaker, runtime)  # the one call, at start-up
    try:
        ctx.console.print("  track(sessionmaker, runtime): a commit writes its flushes' outbox row")
        _every_child_reads(ctx, _name(ctx, Category))
        own = runtime.registry.table("categories")
        own.get(KEY)  # this process caches the record too
        with ctx.database.session() as session:
            row = session.get(Category, KEY)
            row.name = f"{row.name.split(' (')[0]} (ORM write)"
            name = row.name
        ctx.console.print(f"  ORM write:  categories {KEY}.name = {name!r}; commit")
        ctx.console.print(f"    this process, right after commit(): {own.get(KEY)['name']!r}")
        pids = _every_child_reads(ctx, name)
        ctx.console.print(f"    cachework.lookup in children {sorted(pids)} -> {name!r}")

        name = name.replace("(ORM write)", "(bulk update)")
        with ctx.database.session() as session:
            session.execute(sa.update(Category).where(Category.id == KEY).values(name=name))
        ctx.console.print(f"  bulk ORM:   update(Category).where(id == {KEY}); commit")
        pids = _every_child_reads(ctx, name)
        ctx.console.print(f"    cachework.lookup in children {sorted(pids)} -> {name!r}")

        session = ctx.database.sessionmaker()
        try:
            session.get(Category, KEY).name = "never committed"
            session.flush()
            session.rollback()
        finally:
            session.close()
        pids = _every_child_reads(ctx, name)
        ctx.console.print(f"  rollback:   no event; children {sorted(pids)} still read {name!r}")
        ctx.console.print(f"  tracking stats: {tracking.stats}", highlight=False)
        if ctx.database.engine.dialect.name == "postgresql":
            ctx.console.print("  raw SQL: run `cachework triggers install` to cover it")
        else:
            ctx.console.print(
                "  raw SQL:    needs the PostgreSQL triggers (`cachework triggers install`); "
                "this demo runs on SQLite, so raw SQL is not shown here (see "
                "tests/test_tracking_web_app.py, which runs it on PostgreSQL)"
            )
    finally:
        tracking.stop()
        runtime.stop()


def _name(ctx, model) -> str:
    with ctx.database.session() as session:
        return session.get(model, KEY).name
