"""Worker nodes and environments of the fault suite (tests/test_faults*.py): a freshly
seeded schema, worker processes that are always stopped, and the invalidation-traffic
environment the Redis-fault and bad-input modules share the shape of."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import RedisLog
from cachework.settings import load_settings
from demo.seed import seed
from tests.conftest import MODELS, make_env
from tests.fault_helpers import engine_for
from tests.invalidation_helpers import OwnRedis


def fresh_schema(url: str) -> sa.Engine:
    """An engine on `url` whose public schema was dropped, recreated and seeded."""
    from cachework.worker.schema import create_tables

    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=2, products=4000)
    return engine


class Node:
    """Worker nodes of one environment, started and always stopped."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        from cachework.worker import create_app

        self.env = env
        self.folder = folder
        self.app = create_app(load_settings(env))
        self.nodes: list = []

    def start(self, concurrency: int = 2):
        from cachework.worker.spawn import WorkerProcess

        node = WorkerProcess(
            self.env,
            concurrency=concurrency,
            name=f"f{len(self.nodes)}x{time.monotonic_ns()}@127.0.0.1",
            logfile=self.folder / f"worker-{len(self.nodes)}.log",
        ).start()
        self.nodes.append(node)
        node.wait_ready(self.app, timeout=90)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.stop(timeout=10)
        self.app.runtime.close()
        self.app.close()


def traffic_environment(
    pg_server_url: str, redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """A prefork worker whose invalidation stream is a Redis server of the test's own (to
    restart or freeze), its broker and results on db 7 of the suite's Redis. Each module
    using it wraps it in a module-scoped fixture `traffic` (`yield from` this)."""
    folder = tmp_path_factory.mktemp("faults-redis")
    engine = fresh_schema(pg_server_url)
    server = OwnRedis(folder / "stream").start()
    url = redis_server_url.rsplit("/", 1)[0] + "/7"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    env = make_env(
        folder,
        database_url=pg_server_url,
        broker_url=url,
        result_backend=url,
        redis_url=server.url,
        listener_stale_after="2",
    )
    nodes = Node(env, folder)
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
    try:
        nodes.start()
        yield {"engine": engine, "server": server, "nodes": nodes, "log": RedisLog(client)}
    finally:
        nodes.close()
        client.close()
        server.stop()
        broker.flushdb()
        broker.close()
        engine.dispose()
