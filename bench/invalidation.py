"""Benchmark: invalidation fan-out latency and the cost of the task-start catch-up.

    .venv/bin/python bench/invalidation.py [--rates 200,1000] [--seconds 4] [--round-trips 400]
                                           [--pg-admin URL]

Starts its own redis-server on a free loopback port (broker, results and the invalidation
stream), a throwaway PostgreSQL database (dropped at the end) and real prefork workers:

- fan-out: 2 nodes x 2 children; events published at each rate for `--seconds`; for
  every event, the time from publish to applied in ALL 4 children (the slowest child),
  p50/p99. Target: p99 <= 20 ms at 200/s.
- catch-up cost: the round trip of a no-op task (`celery.accumulate`) on a node whose
  children catch up at task start vs one with no cached tables (no catch-up), measured
  interleaved in the same run; ratio of medians. Target: <= 1.1x.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cachework.cache.invalidation import RedisLog, Tracker, publish
from cachework.importers.bootstrap import bootstrap
from cachework.settings import load_settings
from cachework.worker import create_app
from cachework.worker.routing import QUEUES
from cachework.worker.schema import create_tables
from cachework.worker.spawn import WorkerProcess
from tests.invalidation_helpers import FakeTarget, OwnRedis


def env_for(folder: Path, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    env.update(
        CACHEWORK_DATA_DIR=str(folder),
        CACHEWORK_DATABASE_URL=database_url,
        CACHEWORK_BROKER_URL=redis_url,
        CACHEWORK_RESULT_BACKEND=redis_url,
        CACHEWORK_REDIS_URL=redis_url,
        CACHEWORK_IMPORT_SCHEDULE="off",
        CACHEWORK_SYNC_SCHEDULE="off",
        CACHEWORK_LOG_LEVEL="WARNING",
    )
    env.update({f"CACHEWORK_{k.upper()}": v for k, v in extra.items()})
    return env


def probe_all(app, since: str, want: int = 4, rounds: int = 60) -> dict[int, dict]:
    """`cachework.invalidation_probe` from every child of the fan-out nodes."""
    seen: dict[int, dict] = {}
    for _ in range(rounds):
        pending = [
            app.send_task("cachework.invalidation_probe", kwargs={"since": since}, queue="cache")
            for _ in range(8)
        ]
        for p in pending:
            answer = p.get(timeout=60, interval=0.005)
            seen[answer["pid"]] = answer
        if len(seen) >= want:
            return seen
    raise RuntimeError(f"only {len(seen)} of {want} children answered the probe")


def fan_out(app, log: RedisLog, rate: int, seconds: float) -> dict:
    """Publish at `rate`/s for `seconds`; latency until every child applied each event."""
    published: dict[str, float] = {}
    count = int(rate * seconds)
    first = log.state().head
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.time()
        published[publish("categories", [random.randint(1, 8)], log=log)] = sent
    achieved = count / (time.perf_counter() - start)
    time.sleep(1.0)
    children = probe_all(app, first)
    latencies: list[float] = []
    missing = 0
    applied = [{i: t for i, t in child["applied"]} for child in children.values()]
    for event_id, sent in published.items():
        times = [a.get(event_id) for a in applied]
        if any(t is None for t in times):
            missing += 1
            continue
        latencies.append((max(times) - sent) * 1000)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    drops = sum(child["listener"].get("drops", 0) for child in children.values())
    return {
        "rate": rate,
        "achieved": achieved,
        "events": count,
        "p50": q[49],
        "p99": q[98],
        "max": latencies[-1] if latencies else 0.0,
        "missing": missing,
        "drops": drops,
    }


def _raw_reader(url: str, key: str, n: int, out) -> None:
    """Baseline listener: plain blocking XREAD in a process of its own, no cachework."""
    client = redis.Redis.from_url(url)
    seen: dict[str, float] = {}
    last = "$"
    deadline = time.monotonic() + 60
    while len(seen) < n and time.monotonic() < deadline:
        for _stream, entries in client.xread({key: last}, block=500) or []:
            now = time.time()
            for entry_id, _fields in entries:
                seen[entry_id.decode()] = now
                last = entry_id
    out.put(seen)


def raw_fan_out(url: str, rate: int, seconds: float) -> dict:
    """The same fan-out through 4 plain XREAD processes: the floor on this machine."""
    ctx = multiprocessing.get_context("fork")
    count = int(rate * seconds)
    key = f"bench:raw:{uuid.uuid4().hex[:6]}"
    out = ctx.Queue()
    readers = [ctx.Process(target=_raw_reader, args=(url, key, count, out)) for _ in range(4)]
    for reader in readers:
        reader.start()
    time.sleep(1.0)
    client = redis.Redis.from_url(url)
    published: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.time()
        published[client.xadd(key, {"e": "{}"}).decode()] = sent
    results = [out.get(timeout=90) for _ in readers]
    for reader in readers:
        reader.join(10)
    client.delete(key)
    client.close()
    latencies = sorted(
        (max(r[i] for r in results) - sent) * 1000
        for i, sent in published.items()
        if all(i in r for r in results)
    )
    q = statistics.quantiles(latencies, n=100)
    return {"p50": q[49], "p99": q[98]}


def catch_up_call_us(url: str, n: int = 2000) -> float:
    """Microseconds per task-start catch-up when up to date (one Lua call), in-process."""
    client = redis.Redis.from_url(url)
    tracker = Tracker(FakeTarget(), RedisLog(client))
    tracker.catch_up()
    started = time.perf_counter()
    for _ in range(n):
        tracker.catch_up()
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed / n * 1e6


def round_trips(app, queue: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        app.send_task("celery.accumulate", queue=queue).get(timeout=30, interval=0.0005)
        out.append(time.perf_counter() - started)
    return out


def catch_up_cost(app, n: int) -> tuple[float, float]:
    """Median no-op round trip (ms) with and without the catch-up, interleaved."""
    with_catch_up: list[float] = []
    without: list[float] = []
    round_trips(app, "bench_on", 50)  # warm both nodes
    round_trips(app, "bench_off", 50)
    for _ in range(n // 20):
        with_catch_up += round_trips(app, "bench_on", 20)
        without += round_trips(app, "bench_off", 20)
    return statistics.median(with_catch_up) * 1000, statistics.median(without) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,1000", help="Events per second, comma-separated.")
    parser.add_argument("--seconds", type=float, default=4.0, help="Seconds per rate.")
    parser.add_argument("--round-trips", type=int, default=400, help="No-op tasks per side.")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="cachework-bench-invalidation-"))
    name = f"cachework_bench_inv_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    database_url = f"{base}/{name}"
    server = OwnRedis(folder / "redis").start()
    nodes: list[WorkerProcess] = []
    engine = sa.create_engine(database_url)
    try:
        seed_database(engine)
        env = env_for(folder, database_url, server.url)
        env_off = env_for(folder, database_url, server.url, cached_tables="off")
        app = create_app(load_settings(env))
        start_fan_out_nodes(app, env, nodes)
        client = redis.Redis.from_url(server.url)
        report_fan_out(app, RedisLog(client), server.url, rates, args.seconds)
        report_catch_up(app, env_off, nodes, server.url, args.round_trips)
        client.close()
        app.close()
    finally:
        for node in nodes:
            node.stop()
        engine.dispose()
        server.stop()
        with psycopg.connect(args.pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_database(engine: sa.Engine) -> None:
    """cachework's tables and the demo's models, one project of 10 products."""
    create_tables(engine, bootstrap(("demo.models",)))
    from demo.seed import seed  # only after bootstrap() mapped the models

    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=1, products=10)


def start_fan_out_nodes(app, env: dict[str, str], nodes: list[WorkerProcess]) -> None:
    """Two nodes of 2 children (the first also serving `bench_on`), each child with its
    cached table loaded; `nodes` gets them as they start, so the caller stops them."""
    for i in range(2):
        queues = (*QUEUES, "bench_on") if i == 0 else QUEUES
        nodes.append(WorkerProcess(env, name=f"fan{i}@127.0.0.1", queues=queues).start())
    for node in nodes:
        node.wait_ready(app, timeout=120)
    for _ in range(8):  # every child loads its cached table
        app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1}).get(30)


def report_fan_out(app, log: RedisLog, url: str, rates: list[int], seconds: float) -> None:
    """Fan-out latency per rate, against 4 plain XREAD processes at the same rate."""
    print(f"fan-out: 2 nodes x 2 children, {seconds:.0f}s per rate (publish -> all 4)")
    for rate in rates:
        r = fan_out(app, log, rate, seconds)
        raw = raw_fan_out(url, rate, seconds)
        target = "  (target p99 <= 20 ms)" if rate == 200 else ""
        print(
            f"  {r['rate']:>5}/s (achieved {r['achieved']:.0f}/s, {r['events']} events): "
            f"p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  max {r['max']:.2f} ms  "
            f"missing {r['missing']}  drops {r['drops']}{target}"
        )
        print(
            f"         baseline, 4 plain XREAD processes: p50 {raw['p50']:.2f} ms  "
            f"p99 {raw['p99']:.2f} ms  -> ours/baseline p50 {r['p50'] / raw['p50']:.2f}x  "
            f"p99 {r['p99'] / raw['p99']:.2f}x"
        )


def report_catch_up(
    app, env_off: dict[str, str], nodes: list[WorkerProcess], url: str, n: int
) -> None:
    """No-op round trips on the catch-up node against a node without cached tables."""
    off_node = WorkerProcess(env_off, name="off@127.0.0.1", queues=("bench_off",)).start()
    nodes.append(off_node)
    off_node.wait_ready(app, timeout=120)
    on, off = catch_up_cost(app, n)
    print(f"task-start catch-up, no-op task round trip (median of {n}):")
    print(f"  with catch-up {on:.3f} ms / without {off:.3f} ms = {on / off:.3f}x  (target <= 1.1x)")
    call_us = catch_up_call_us(url)
    print(f"  one catch-up call when up to date, in-process: {call_us:.0f} us")


if __name__ == "__main__":
    main()
