"""A test-only model module for data-driven rebuilds through real workers: the demo's
models (re-exported `Base`) plus a plugin, `watch`, whose item `total` (the sum of a
project's prices) declares that it reads `products` by `project_uuid`.

Each rebuild pushes (start, end, total, pid) on `watch:<project>` in the worker's Redis
and its pid on `watch:started:<project>` as it starts; it holds `watch:hold` seconds when
that key is set (a rebuild to kill mid-way)."""

from __future__ import annotations

import json
import os
import time

from cachework.api import reads
from demo.models import Base  # noqa: F401 - bootstrap's model check
from tests.project_cache_helpers import price_total, worker_redis

CACHE_PLUGINS = ["tests.data_driven_app:WatchPlugin"]
HOLD_KEY = "watch:hold"


def rebuilds_key(project: str) -> str:
    return f"watch:{project}"


def started_key(project: str) -> str:
    return f"watch:started:{project}"


class WatchPlugin:
    app_name = "watch"
    item_names = ("total",)
    depends_on = {"total": [reads("products", project="project_uuid")]}

    def update_cache(self, store, session, project=None, name=None) -> None:
        if project is None:
            return
        client = worker_redis()
        start = time.time()
        client.rpush(started_key(project), os.getpid())
        hold = float(client.get(HOLD_KEY) or 0)
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline and client.get(HOLD_KEY):
            time.sleep(0.05)
        total = price_total(session, project)
        store.set_item("total", {"sum": total})
        client.rpush(rebuilds_key(project), json.dumps([start, time.time(), total, os.getpid()]))


class MisdeclaredPlugin:
    """`depends_on` naming a column products does not have (tests/test_data_driven.py)."""

    app_name = "misdeclared"
    depends_on = {"total": [reads("products", project="project_id")]}

    def update_cache(self, store, session, project=None, name=None) -> None:
        return None
