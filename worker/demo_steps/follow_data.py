"""Demo step: project caches that follow the data. The demo plugin declares what its
items read (`depends_on` in demo/plugin.py); a tracked price change in one project then
rebuilds that project's items by themselves, within the debounce bound, while the other
projects' items keep their built-at times; a freshness read says "pending" until then."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa

from cachework.cache.invalidation import track
from cachework.cache.items import changes, store
from cachework.worker.runtime import Runtime

APP = "inventory"


def _built(ctx, project: str) -> dict:
    with ctx.database.session() as session:
        return {i.name: i.updated_at for i in store.get_project_items(session, project, APP)}


def _wait_quiet(ctx, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ctx.database.engine.connect() as conn:
            if not changes.pending(conn):
                return
        time.sleep(0.1)
    raise RuntimeError(f"rebuilds still pending after {timeout:.0f}s")


def _pending_after(ctx, project: str, started: float) -> str:
    """How long until a freshness read says "pending" (the follower has seen the change)."""
    while time.monotonic() - started < 10:
        with ctx.database.session() as session:
            if changes.freshness(session, APP, "summary", project).pending:
                return f"{time.monotonic() - started:.2f}s"
        time.sleep(0.01)
    return "more than 10s"


def run(ctx) -> None:
    ctx.console.rule("project caches that follow the data: no sync_cache from the app")
    from demo.models import Product

    s = ctx.settings
    runtime = Runtime(s, database=ctx.database).start()  # as a web app does
    tracking = track(ctx.database.sessionmaker, runtime)
    try:
        _wait_quiet(ctx)  # the earlier steps' category changes are rebuilt first
        with ctx.database.session() as session:
            projects = sorted({str(p) for p in session.scalars(sa.select(Product.project_uuid))})
        project = projects[0]
        others = {p: _built(ctx, p) for p in projects[1:]}
        committed = datetime.now(UTC)
        started = time.monotonic()
        with ctx.database.session() as session:
            product = session.scalars(
                sa.select(Product).where(Product.project_uuid == project).limit(1)
            ).one()
            product.price = (product.price or Decimal(0)) + Decimal("100.00")
            changed_id = product.id
        ctx.console.print(f"  ORM write:  product {changed_id} of project {project[:8]}: +100")
        pending = _pending_after(ctx, project, started)
        ctx.console.print(f"    the worker's change follower marked it pending after {pending}")
        bound = max(s.rebuild_delay, s.rebuild_every) + 30
        while time.monotonic() - started < bound:
            now = _built(ctx, project)
            if len(now) == 2 and all(at > committed for at in now.values()):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"project {project}'s items were not rebuilt within {bound:.0f}s")
        elapsed = time.monotonic() - started
        with ctx.database.session() as session:
            summary = store.get_item(session, APP, "summary", project).data
            fresh = changes.freshness(session, APP, "summary", project)
        ctx.console.print(
            f"    rebuilt by itself after {elapsed:.1f}s (a change waits "
            f"CACHEWORK_REBUILD_DELAY={s.rebuild_delay:g}s, and an item is rebuilt at most "
            f"once per CACHEWORK_REBUILD_EVERY={s.rebuild_every:g}s, the sync above "
            f"included): summary {summary}",
            highlight=False,
        )
        ctx.console.print(f"    freshness: pending={fresh.pending}, built at {fresh.built_at:%X}")
        untouched = all(_built(ctx, p) == items for p, items in others.items())
        ctx.console.print(f"  the other {len(others)} projects' items untouched: {untouched}")
    finally:
        tracking.stop()
        runtime.stop()
