"""A Redis that may evict cachework's keys is refused at start-up and makes readiness fail
(issue 18, item 5): an `allkeys-*` policy with `maxmemory` set dropped rebuild requests
silently. Each test runs a redis-server of its own with the policy under test."""

from __future__ import annotations

import logging
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cachework import redis_policy
from cachework.errors import ConfigError
from tests.conftest import make_env, settings_of
from tests.invalidation_helpers import OwnRedis, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
LIMIT = ("--maxmemory", "64mb")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server with maxmemory 64mb and noeviction; tests set the policy."""
    server = OwnRedis(tmp_path / "redis", args=(*LIMIT, "--maxmemory-policy", "noeviction"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def set_policy(server: OwnRedis, policy: str) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set("maxmemory-policy", policy)
    finally:
        client.close()


def env_for(tmp_path: Path, **values: str) -> dict[str, str]:
    env = make_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'app.db'}", **values)
    Path(env["CACHEWORK_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    return env


@pytest.mark.parametrize(
    ("policy", "maxmemory", "evicts"),
    [
        ("allkeys-lru", 1, True),
        ("allkeys-lfu", 1 << 30, True),
        ("allkeys-random", 1, True),
        ("some-future-policy", 1, True),
        ("noeviction", 1, False),
        ("volatile-lru", 1, False),
        ("volatile-lfu", 1, False),
        ("volatile-random", 1, False),
        ("volatile-ttl", 1, False),
        ("allkeys-lru", 0, False),  # no limit: nothing is ever evicted
    ],
)
def test_which_policies_may_evict_keys_without_a_ttl(policy, maxmemory, evicts):
    assert redis_policy.evicts(policy, maxmemory) is evicts


def test_the_servers_checked(tmp_path):
    def servers(**values: str) -> list[tuple[str, str]]:
        settings = settings_of(make_env(tmp_path, **values))
        return [(n, u) for n, u, _ in redis_policy.servers(settings, broker=True)]

    a, b = "redis://127.0.0.1:7001/0", "redis://:secret@127.0.0.1:7002/3"
    assert servers(broker_url=a) == [("CACHEWORK_REDIS_URL", a)]  # the broker's Redis, once
    assert servers(broker_url=a, redis_url=a.replace("/0", "/5")) == [
        ("CACHEWORK_REDIS_URL", a.replace("/0", "/5"))  # one server, two databases
    ]
    assert servers(broker_url=b, redis_url=a) == [
        ("CACHEWORK_REDIS_URL", a),
        ("CACHEWORK_BROKER_URL", b),
    ]
    assert servers(broker_url=b, redis_url="off") == [("CACHEWORK_BROKER_URL", b)]
    assert servers(redis_url="off") == []  # filesystem broker, database log


def run_until_exit(cmd: list[str], env: dict[str, str], timeout: float = 45) -> tuple[int, str]:
    """Run a worker command; (exit status, stderr). A worker that starts instead of
    refusing is stopped (with its process group) and reported as status None."""
    from cachework.worker.spawn import stop_process_group

    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _out, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        return None, proc.stderr.read()
    finally:
        proc.stderr.close()


CELERY = [sys.executable, "-m", "celery", "-A", "cachework.worker", "worker", "-P", "solo"]
CACHEWORK = [
    sys.executable,
    "-c",
    "from cachework.worker.cli import main; main()",
    "worker",
    "-P",
    "solo",
]


@pytest.mark.parametrize(
    ("command", "policy", "setting"),
    [
        (CELERY, "allkeys-lru", "CACHEWORK_REDIS_URL"),
        (CACHEWORK, "allkeys-random", "CACHEWORK_REDIS_URL"),
        (CACHEWORK, "allkeys-lfu", "CACHEWORK_BROKER_URL"),
    ],
)
def test_a_worker_refuses_a_redis_that_may_evict_our_keys(
    command, policy, setting, own_redis, tmp_path
):
    set_policy(own_redis, policy)
    if setting == "CACHEWORK_REDIS_URL":
        env = env_for(tmp_path, redis_url=own_redis.url)
    else:  # a Redis broker on its own server, the invalidations in the database
        env = env_for(tmp_path, broker_url=own_redis.url, redis_url="off")
    status, err = run_until_exit(command, env)
    assert status == 2, f"the worker started (status {status}): {err[-2000:]}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    line = errors[0]
    for words in (
        f"{setting}='{own_redis.url}'",
        f"maxmemory-policy is {policy}",
        f"maxmemory {64 << 20}",
        "noeviction or a volatile-* policy",
    ):
        assert words in line, line


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru"])
def test_a_worker_starts_with_a_redis_that_keeps_our_keys(
    policy, own_redis, tmp_path, worker_process
):
    set_policy(own_redis, policy)
    env = env_for(tmp_path, broker_url=own_redis.url, result_backend=own_redis.url)
    node, app = worker_process(env, concurrency=1, pool="solo")
    assert app.control.ping(destination=[node.name], timeout=2)


def test_the_web_runtime_check(own_redis, tmp_path):
    """What `start_runtime` runs: the invalidation Redis only (a web process needs no
    broker, so a Redis broker's policy is the workers' to check)."""
    settings = settings_of(env_for(tmp_path, redis_url=own_redis.url))
    redis_policy.refuse_evicting(settings)
    set_policy(own_redis, "volatile-ttl")
    redis_policy.refuse_evicting(settings)
    set_policy(own_redis, "allkeys-lru")
    with pytest.raises(ConfigError, match=r"CACHEWORK_REDIS_URL=.*maxmemory-policy is allkeys-lru"):
        redis_policy.refuse_evicting(settings)
    other = settings_of(env_for(tmp_path, broker_url=own_redis.url, redis_url="off"))
    redis_policy.refuse_evicting(other)  # no invalidation Redis: nothing to check here
    with pytest.raises(ConfigError, match=r"CACHEWORK_BROKER_URL=.*may silently evict queued"):
        redis_policy.refuse_evicting(other, broker=True)


def test_an_acl_user_without_config_gets_a_warning_not_a_refusal(own_redis, tmp_path, caplog):
    set_policy(own_redis, "allkeys-lru")  # even so: the policy cannot be read
    admin = redis.Redis.from_url(own_redis.url)
    try:
        admin.acl_setuser(
            "app", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
            commands=["+@all", "-config"],
        )  # fmt: skip
    finally:
        admin.close()
    url = own_redis.url.replace("redis://", "redis://app:s3cret@")
    settings = settings_of(env_for(tmp_path, redis_url=url))
    with caplog.at_level(logging.WARNING, logger="cachework.redis_policy"):
        redis_policy.refuse_evicting(settings)
    warnings = [r.getMessage() for r in caplog.records if r.name == "cachework.redis_policy"]
    assert len(warnings) == 1, warnings
    assert (
        "cannot read Redis maxmemory-policy (CONFIG GET refused: NoPermissionError" in (warnings[0])
    )
    assert "s3cret" not in warnings[0] and "noeviction or a volatile-* policy" in warnings[0]
    assert redis_policy.eviction_problems(settings) == []  # readiness: not a problem


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _health(env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cachework.worker.cli import main; main()",
            "health",
            "--timeout",
            "2",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_readiness_fails_while_the_policy_may_evict(own_redis, tmp_path, worker_process):
    """A policy changed at run time (CONFIG SET): the node's `/ready` and `cachework
    health` say so with the same line, and recover when it is set back."""
    port = free_port()
    env = env_for(
        tmp_path,
        broker_url=own_redis.url,
        result_backend=own_redis.url,
        metrics_port=str(port),
    )
    worker_process(env, concurrency=1)
    wait_until(lambda: _get(port, "/ready") == (200, "ok\n"), timeout=30, every=0.2)
    assert _health(env) == (0, "ok (readiness)")
    set_policy(own_redis, "allkeys-lru")
    status, text = _get(port, "/ready")
    assert status == 503 and "maxmemory-policy is allkeys-lru" in text, text
    assert f"CACHEWORK_REDIS_URL='{own_redis.url}'" in text, text
    status, text = _health(env)
    assert status == 1 and len(text.splitlines()) == 1, text
    assert "unhealthy (readiness): CACHEWORK_REDIS_URL=" in text, text
    assert "maxmemory-policy is allkeys-lru" in text, text
    assert _get(port, "/live") == (200, "ok\n")  # alive: a restart would not help
    set_policy(own_redis, "noeviction")
    assert _get(port, "/ready") == (200, "ok\n")


def test_a_web_process_readiness_fails_while_the_policy_may_evict(own_redis, tmp_path):
    from cachework.worker import metrics
    from cachework.worker.runtime import Runtime

    settings = settings_of(env_for(tmp_path, redis_url=own_redis.url))
    runtime = Runtime(settings)
    server = metrics.start_http_server(runtime, port=0)
    try:
        assert _get(server.port, "/ready") == (200, "ok\n")
        set_policy(own_redis, "allkeys-lfu")
        status, text = _get(server.port, "/ready")
        assert status == 503 and "maxmemory-policy is allkeys-lfu" in text, text
        assert _get(server.port, "/live") == (200, "ok\n")
        set_policy(own_redis, "volatile-lru")
        assert _get(server.port, "/ready") == (200, "ok\n")
    finally:
        server.stop()
        runtime.close()


def test_no_key_that_must_not_be_lost_carries_a_ttl(redis_url):
    """`volatile-*` is safe only while this holds: after rebuild requests, a rebuild, an
    invalidation and beat's bookkeeping, the only keys of ours with a TTL are locks."""
    from cachework.cache.invalidation import RedisLog
    from cachework.cache.items.locks import RedisLocks
    from cachework.worker.beat import LAST_RUN_KEY, BeatLock

    client = redis.Redis.from_url(redis_url)
    try:
        locks = RedisLocks(client, ttl_ms=60_000)
        held, waiting = locks.lock("inventory:p1"), locks.lock("inventory:p2")
        held.mark_dirty(["summary"])
        assert held.acquire()
        assert held.take_dirty() == {"summary"}  # the taken set, while the rebuild runs
        waiting.mark_dirty(None)  # a request waiting in the dirty set
        RedisLog(client).append('{"v":1,"table":"categories","keys":[1]}')
        assert BeatLock(client, ttl=30).hold()
        client.hset(LAST_RUN_KEY, "sync", "2026-01-01T00:00:00")
        keys = {k.decode(): client.pttl(k) for k in client.scan_iter("cachework:*")}
    finally:
        client.close()
    assert {
        "cachework:cache:dirty:inventory:p2",
        "cachework:cache:taken:inventory:p1",
        "cachework:invalidations",
        "cachework:invalidations:epoch",
        LAST_RUN_KEY,
    } <= set(keys), keys
    with_ttl = {k for k, ttl in keys.items() if ttl >= 0}
    assert with_ttl == {"cachework:cache:lock:inventory:p1", "cachework:beat:lock"}, keys


def test_start_runtime_refuses_an_evicting_redis(own_redis, tmp_path):
    """A web process's `start_runtime()` checks CACHEWORK_REDIS_URL as a worker does."""
    from cachework.worker.runtime import start_runtime

    set_policy(own_redis, "allkeys-lru")
    settings = settings_of(env_for(tmp_path, redis_url=own_redis.url))
    with pytest.raises(ConfigError, match=r"CACHEWORK_REDIS_URL=.*maxmemory-policy is allkeys-lru"):
        start_runtime(settings)


def test_a_write_refused_by_a_full_noeviction_redis_is_retried_not_failed(own_redis):
    """Under `noeviction` a full Redis refuses writes (OOM) and evicts nothing: transient,
    so the task retries with backoff once memory frees up."""
    from cachework.errors import TransientError, is_transient, transient_errors

    client = redis.Redis.from_url(own_redis.url)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")  # below what is used: every write refused
        with pytest.raises(redis.OutOfMemoryError) as refused:
            client.sadd("cachework:cache:dirty:app:-", "*")
        assert is_transient(refused.value)
        with pytest.raises(TransientError, match="OutOfMemoryError"), transient_errors("Redis"):
            client.sadd("cachework:cache:dirty:app:-", "*")
    finally:
        client.config_set("maxmemory", "0")
        client.close()
