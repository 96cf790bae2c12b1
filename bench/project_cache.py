"""Project cache benchmark (PostgreSQL + Redis on 127.0.0.1), baselines in the same run.

1. Writing N cache items (default 10,000) with `cachework.cache.items.store.set_items` (one INSERT
... ON
   CONFLICT per batch) versus the reference's way, an ORM get-then-save per item (here in
   one transaction with a flush per item: kinder to the baseline than a commit per item).
   Both for first writes (inserts) and rewrites (updates).
2. A full `cachework.sync_cache` of P projects (default 1,000) through real prefork
   workers: 2 worker processes versus 1, ratio printed.

Run: .venv/bin/python bench/project_cache.py [--items N] [--projects P] [--products M]
     [--skip-sync] [--two-nodes]
It makes (and drops) its own PostgreSQL database and claims a free Redis db number.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
import sqlalchemy as sa
from sqlalchemy.orm import registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cachework.importers.bootstrap import bootstrap

PG_ADMIN = os.environ.get(
    "CACHEWORK_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("CACHEWORK_BENCH_REDIS", "redis://127.0.0.1:6379")
RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


class OrmItem:
    """The reference's model, mapped onto the same table."""


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def _claim_redis_db() -> tuple[redis.Redis, int]:
    claims = redis.Redis.from_url(f"{REDIS_BASE}/0", socket_connect_timeout=3)
    for number in range(15, 0, -1):
        if claims.set(f"cachework:test-db:{number}", f"bench-{RUN}", nx=True, ex=3600):
            return claims, number
    raise SystemExit("every Redis db number 1-15 is claimed; try again later")


def _reset(database) -> None:
    from cachework.cache.items.store import cache_items

    with database.session() as session:
        session.execute(sa.delete(cache_items))


def _items(n: int, generation: int) -> list[dict]:
    projects = [str(uuid.UUID(int=p + 1)) for p in range(max(1, n // 10))]
    return [
        {
            "project": projects[i % len(projects)],
            "app_name": "bench",
            "name": f"item-{i // len(projects)}",
            "data": {"i": i, "generation": generation, "values": list(range(10))},
        }
        for i in range(n)
    ]


def bench_writes(database, n: int) -> None:
    from cachework.cache.items import store

    mapper_registry = registry()
    mapper_registry.map_imperatively(OrmItem, store.cache_items)

    def with_set_items(items):
        with database.session() as session:
            store.set_items(session, items)

    def with_orm(items):
        table = store.cache_items
        with database.session() as session:
            for item in items:
                obj = session.execute(
                    sa.select(OrmItem).where(
                        table.c.project == item["project"],
                        table.c.app_name == item["app_name"],
                        table.c.name == item["name"],
                    )
                ).scalar_one_or_none()
                stamp = store.now()
                if obj is None:
                    obj = OrmItem()
                    obj.project, obj.app_name, obj.name = (
                        item["project"],
                        item["app_name"],
                        item["name"],
                    )
                    obj.data_type, obj.created_at = "json", stamp
                    session.add(obj)
                obj.data, obj.updated_at = item["data"], stamp
                session.flush()

    print(f"\n== {n:,} cache items on PostgreSQL")
    for label, generation in (("first write (insert)", 1), ("rewrite (update)", 2)):
        timings = {}
        for name, write in (("set_items", with_set_items), ("ORM get-then-save", with_orm)):
            if generation == 1:
                _reset(database)
            else:
                _reset(database)
                with_set_items(_items(n, 1))
            started = time.perf_counter()
            write(_items(n, generation))
            timings[name] = time.perf_counter() - started
        fast, slow = timings["set_items"], timings["ORM get-then-save"]
        print(
            f"{label:22s} set_items {fast:7.3f}s ({n / fast:9,.0f}/s)   "
            f"ORM get-then-save {slow:7.3f}s ({n / slow:7,.0f}/s)   ratio {slow / fast:5.1f}x"
        )
    mapper_registry.dispose()
    _reset(database)


def bench_sync(database, db_url: str, redis_url: str, projects: int, two_nodes: bool) -> None:
    from cachework.settings import load_settings
    from cachework.worker import create_app
    from cachework.worker.spawn import WorkerProcess

    folder = Path(tempfile.mkdtemp(prefix="cachework-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    env.update(
        CACHEWORK_DATA_DIR=str(folder),
        CACHEWORK_DATABASE_URL=db_url,
        CACHEWORK_BROKER_URL=redis_url,
        CACHEWORK_RESULT_BACKEND=redis_url,
        CACHEWORK_REDIS_URL=redis_url,
        CACHEWORK_IMPORT_SCHEDULE="off",
        CACHEWORK_SYNC_SCHEDULE="off",
        CACHEWORK_LOG_LEVEL="WARNING",
    )
    app = create_app(load_settings(env))
    layouts = {1: [1], 2: [1, 1] if two_nodes else [2]}
    print(
        f"\n== full sync_cache of {projects:,} projects (fan-out over the cache queue, "
        f"{'two nodes' if two_nodes else 'one node'} for 2 processes)"
    )
    timings = {}
    try:
        for processes, node_sizes in layouts.items():
            nodes = [
                WorkerProcess(
                    env,
                    concurrency=size,
                    name=f"bench{processes}-{i}@127.0.0.1",
                    logfile=folder / f"worker-{processes}-{i}.log",
                ).start()
                for i, size in enumerate(node_sizes)
            ]
            try:
                for node in nodes:
                    node.wait_ready(app, timeout=90)
                if processes == 1:  # warm-up: create the items, so both runs rewrite them
                    app.send_task("cachework.sync_cache").get(timeout=1800, interval=0.1)
                started = time.perf_counter()
                result = app.send_task("cachework.sync_cache").get(timeout=1800, interval=0.1)
                timings[processes] = time.perf_counter() - started
            finally:
                for node in nodes:
                    node.stop()
            assert result["projects"] == projects and not result["errors"], result
            print(
                f"{processes} worker process(es): {timings[processes]:7.2f}s "
                f"({projects / timings[processes]:6.0f} projects/s, {result['updated']} items)"
            )
        print(f"speed-up 2 processes vs 1: {timings[1] / timings[2]:.2f}x")
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=1_000)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--skip-sync", action="store_true")
    parser.add_argument("--two-nodes", action="store_true", help="2 nodes x 1 process")
    args = parser.parse_args()

    name = f"cachework_bench_{RUN}"
    _admin(f'CREATE DATABASE "{name}"')
    claims, number = _claim_redis_db()
    redis_url = f"{REDIS_BASE}/{number}"
    db_url = (
        PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    )
    os.environ["CACHEWORK_DATABASE_URL"] = db_url
    os.environ["CACHEWORK_REDIS_URL"] = redis_url
    database = None
    try:
        from cachework import database as db
        from cachework.worker.schema import create_tables

        models = bootstrap(("demo.models",))
        database = db.Database(db_url)
        create_tables(database.engine, models)
        bench_writes(database, args.items)
        if not args.skip_sync:
            from demo.seed import seed

            with database.session() as session:
                seed(session, projects=args.projects, products=args.products)
            bench_sync(database, db_url, redis_url, args.projects, args.two_nodes)
    finally:
        if database is not None:
            database.dispose()
        redis.Redis.from_url(redis_url).flushdb()
        claims.delete(f"cachework:test-db:{number}")
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
