"""Fault row "Redis eviction under memory pressure" (`make faults`; issue 18, item 5).

With `maxmemory` set and an `allkeys-*` policy, Redis evicted the dirty sets of rebuild
requests silently. Two halves, each on a redis-server of the suite's own:

- every `allkeys-*` policy: a real `celery -A cachework.worker worker` must refuse to start with one
  line naming the setting (completed: refused; lost: it started);
- `noeviction` and `volatile-lru` (the policies that start): rebuild requests (the write
  `rebuild_scope` begins with: the scope's dirty set) and invalidations (the stream) made
  while a neighbour fills memory. A write Redis refuses (OOM) raises to the caller, who
  retries it once memory is freed; at the end every request that returned must still be
  there (lost: it returned, and is gone). The same run on `allkeys-lru` is the control:
  it loses requests, so the count would see a loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from cachework.cache.invalidation import RedisLog
from cachework.cache.items.locks import RedisLocks
from cachework.errors import CacheworkError
from tests.fault_helpers import TABLE
from tests.invalidation_helpers import OwnRedis
from tests.test_redis_eviction import CELERY, env_for, run_until_exit

pytestmark = pytest.mark.faults

SCENARIO = "Redis eviction under memory pressure"
REQUESTS = 60
FILLER = b"x" * 1024  # small values: memory fills to the limit, not 64 KB short of it


def test_an_evicting_policy_is_refused_at_start(tmp_path: Path):
    row = TABLE.row(SCENARIO)
    for policy in ("allkeys-lru", "allkeys-lfu", "allkeys-random"):
        server = OwnRedis(
            tmp_path / policy, args=("--maxmemory", "8mb", "--maxmemory-policy", policy)
        ).start()
        try:
            row.tries += 1
            env = env_for(tmp_path / policy, broker_url=server.url, result_backend=server.url)
            status, err = run_until_exit(CELERY, env, timeout=30)
            line = next((x for x in err.splitlines() if x.startswith("error:")), "")
            if status is None:
                row.lost += 1
                row.notes.append(f"{policy}: the worker started")
            elif status == 2 and f"maxmemory-policy is {policy}" in line:
                row.completed += 1
            else:
                row.notes.append(f"{policy}: exit {status}: {err[-300:]}")
        finally:
            server.stop()
    assert row.lost == 0 and row.completed == 3, row


def fill_and_request(url: str, *, filler_ttl: int | None) -> dict[str, int]:
    """REQUESTS rebuild requests and invalidations, each after a neighbour's 512 KB of
    filler; refused ones are retried once the filler is gone. Counts what came back."""
    client = redis.Redis.from_url(url)
    neighbour = redis.Redis.from_url(url)
    locks, log = RedisLocks(client, ttl_ms=60_000), RedisLog(client, maxlen=10_000)
    done: list[tuple[int, str]] = []  # (request, its event id): returned without error
    refused: list[int] = []
    counts = {"refused": 0, "filler_refused": 0}
    try:
        for i in range(REQUESTS):
            pipe = neighbour.pipeline(transaction=False)
            for j in range(512):
                pipe.set(f"filler:{i}:{j}", FILLER, ex=filler_ttl)
            replies = pipe.execute(raise_on_error=False)
            counts["filler_refused"] += sum(isinstance(r, redis.OutOfMemoryError) for r in replies)
            try:
                locks.lock(f"inventory:p{i}").mark_dirty(["summary"])
                event_id = log.append(f'{{"v":1,"table":"categories","keys":[{i}]}}')
            except (redis.OutOfMemoryError, CacheworkError):
                refused.append(i)  # the caller sees the error: it retries
                counts["refused"] += 1
                continue
            done.append((i, event_id))
        for key in neighbour.scan_iter("filler:*", count=1000):
            neighbour.delete(key)
        for i in refused:  # the retry, with memory free
            locks.lock(f"inventory:p{i}").mark_dirty(["summary"])
            done.append((i, log.append(f'{{"v":1,"table":"categories","keys":[{i}]}}')))
        stream = {entry[0].decode() for entry in client.xrange(log.key)}
        kept = sum(
            client.sismember(f"cachework:cache:dirty:inventory:p{i}", "summary")
            and event_id in stream
            for i, event_id in done
        )
        evicted = int(client.info("stats")["evicted_keys"])
    finally:
        client.close()
        neighbour.close()
    return {**counts, "requests": len(done), "kept": kept, "evicted": evicted}


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru"])
def test_no_request_is_lost_when_memory_is_full(policy, tmp_path: Path):
    row = TABLE.row(SCENARIO)
    server = OwnRedis(
        tmp_path / "redis", args=("--maxmemory", "8mb", "--maxmemory-policy", policy)
    ).start()
    try:
        found = fill_and_request(server.url, filler_ttl=3600 if policy != "noeviction" else None)
    finally:
        server.stop()
    row.tries += found["requests"]
    row.completed += found["kept"]
    row.lost += found["requests"] - found["kept"]
    row.notes.append(
        f"{policy}: {found['refused']} requests refused (OOM) and retried, "
        f"{found['filler_refused']} filler writes refused, {found['evicted']} keys evicted"
    )
    assert found["requests"] == REQUESTS and found["kept"] == REQUESTS, found
    if policy == "noeviction":
        assert found["refused"] > 0 and found["evicted"] == 0, found  # memory was full
    else:
        assert found["evicted"] > 0, found  # eviction ran and took only filler


def test_control_allkeys_lru_loses_requests(tmp_path: Path):
    """Not a row: the same run on the policy the start-up check refuses loses requests
    (what the issue found), so the count above would have seen a loss."""
    server = OwnRedis(
        tmp_path / "redis", args=("--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru")
    ).start()
    try:
        found = fill_and_request(server.url, filler_ttl=None)
    finally:
        server.stop()
    TABLE.row(SCENARIO).notes.append(
        f"control allkeys-lru: {found['requests'] - found['kept']} of {found['requests']} lost"
    )
    assert found["kept"] < found["requests"], found
