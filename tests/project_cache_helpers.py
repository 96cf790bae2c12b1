"""Test-only cache plugins, registered the ordinary way: a model module that names them.

Workers started with `CACHEWORK_MODELS=demo.models,tests.project_cache_helpers` find them
through `cachework.cache.items.plugins.discover` (this module re-exports the demo's `Base`, which
is what
bootstrap asks of a model module; it maps no classes of its own).

- `recorder`: item `total` = the sum of the project's prices; holds the rebuild for
  HOLD seconds (or the Redis key HOLD_KEY), pushes its pid on `started:<project>` when it
  starts, on `read:<project>` once it has read the prices (half-way) and its (start, end,
  pid) on `intervals:<project>` when done. Needs Redis.
- `flaky`: item `value`; raises for a project whose title starts with "FAIL" after
  having set an item, to prove a failed rebuild writes nothing.
"""

from __future__ import annotations

import functools
import json
import os
import time
from decimal import Decimal

import redis
import sqlalchemy as sa

from cachework.cache.items import store
from demo.models import Base, Product, Project  # noqa: F401 - Base: bootstrap's model check

CACHE_PLUGINS = [
    "tests.project_cache_helpers:RecordingPlugin",
    "tests.project_cache_helpers:FlakyPlugin",
]
HOLD = 0.4
HOLD_KEY = "recorder:hold"  # seconds, overrides HOLD


def intervals_key(project: str) -> str:
    return f"intervals:{project}"


def started_key(project: str) -> str:
    return f"started:{project}"


def read_key(project: str) -> str:
    return f"read:{project}"


@functools.cache
def _redis_for(pid: int, url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def worker_redis() -> redis.Redis:
    """This process's client for the worker's CACHEWORK_REDIS_URL."""
    from cachework.settings import load_settings

    return _redis_for(os.getpid(), load_settings().redis_url)


def price_total(session, project: str) -> str:
    total = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(Product.price), 0)).where(
            Product.project_uuid == project
        )
    ).scalar_one()
    return f"{total:.2f}"


class RecordingPlugin:
    app_name = "recorder"
    item_names = ("total",)

    def update_cache(self, store, session, project=None, name=None) -> None:
        if project is None:
            return
        client = worker_redis()
        hold = float(client.get(HOLD_KEY) or HOLD)
        start = time.time()
        client.rpush(started_key(project), os.getpid())
        time.sleep(hold / 2)
        total = price_total(session, project)  # read mid-way: a change after it needs a round
        client.rpush(read_key(project), os.getpid())
        time.sleep(hold / 2)
        store.set_item("total", {"sum": total})
        client.rpush(intervals_key(project), json.dumps([start, time.time(), os.getpid()]))


class FlakyPlugin:
    app_name = "flaky"

    def update_cache(self, store, session, project=None, name=None) -> None:
        if project is None:
            store.set_item("value", {"site": True})
            return
        title = session.execute(
            sa.select(Project.title).where(Project.uuid == project)
        ).scalar_one()
        store.set_item("value", {"title": title})
        if title.startswith("FAIL"):
            raise RuntimeError(f"cannot rebuild {title!r}")


def expected_demo_items(session) -> dict[str, dict]:
    """The demo items of every project, computed with plain SQL independently of the plugin
    (`total_value` as integer `cents`)."""
    projects = session.execute(sa.text("SELECT uuid FROM projects")).scalars()
    expected = {
        p: {"summary": {"products": 0, "active": 0, "cents": 0}, "by_category": {}}
        for p in projects
    }
    for project, count, active, cents in session.execute(
        sa.text(
            "SELECT project_uuid, COUNT(*), SUM(CASE WHEN active THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN active THEN CAST(ROUND(price * 100) AS INTEGER) ELSE 0 END) "
            "FROM products GROUP BY project_uuid"
        )
    ):
        expected[project]["summary"] = {"products": count, "active": active, "cents": cents}
    for project, code, count in session.execute(
        sa.text(
            "SELECT p.project_uuid, c.code, COUNT(*) FROM products p "
            "JOIN categories c ON c.id = p.category_id GROUP BY p.project_uuid, c.code"
        )
    ):
        expected[project]["by_category"][code] = count
    return expected


def actual_demo_items(session) -> dict[str, dict]:
    """The stored demo items of every project that has some, shaped like
    `expected_demo_items`."""
    actual = {}
    for project in session.execute(sa.text("SELECT uuid FROM projects")).scalars():
        items = {i.name: i.data for i in store.get_project_items(session, project, "inventory")}
        if not items:
            continue
        summary = dict(items["summary"])
        summary["cents"] = int(Decimal(summary.pop("total_value")) * 100)
        actual[project] = {"summary": summary, "by_category": items["by_category"]}
    return actual
