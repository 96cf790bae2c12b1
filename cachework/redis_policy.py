"""Redis must never evict what cachework cannot lose: a start-up refusal and a readiness
line for a server whose `maxmemory-policy` may drop it.

Rebuild requests (the dirty and taken sets of `cachework.cache.items.locks`), the invalidation
stream and
its epoch key, beat's last runs and, on a Redis broker, kombu's queues and unacknowledged
messages carry no TTL and are lost silently if Redis evicts them. Redis evicts only with
`maxmemory` set (not 0), and then by `maxmemory-policy`:

- `allkeys-*` may evict any key: refused;
- `volatile-*` evicts only keys with a TTL. cachework's are the rebuild and beat locks,
  whose early loss is noticed by their renewal like an expiry; nothing that must not be
  lost has one (tests/test_redis_eviction.py checks). When nothing is evictable a write
  fails with an OOM error, as under `noeviction`: an error the caller sees and retries;
- `noeviction`: writes fail with an OOM error when memory is full, nothing is dropped.

Where CONFIG GET is refused (a managed Redis that disables it, an ACL user without
+config) the policy cannot be read: a warning at start-up, not a refusal. An unreachable
server is not this check's to report (liveness does).

The same check refuses a Redis Cluster node (`cluster_enabled:1`), at start-up and in
readiness: one script's keys would land on different slots. A Sentinel-managed master
(sentinel://) is checked like any server, through the client that follows failovers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from cachework.errors import ConfigError, first_line
from cachework.redis_client import client_from_url, server_identity
from cachework.settings import Settings, mask_url

log = logging.getLogger(__name__)

KEEPING = "noeviction or a volatile-* policy"


@dataclass(frozen=True)
class Verdict:
    """What one server's policy means: `problem` (it may evict what must not be lost),
    `unchecked` (why the policy could not be read), or neither (it keeps our keys)."""

    problem: str | None = None
    unchecked: str | None = None


def evicts(policy: str, maxmemory: int) -> bool:
    """True when a server with this policy and limit may evict keys without a TTL."""
    if maxmemory <= 0:
        return False
    return not (policy == "noeviction" or policy.startswith("volatile-"))


OURS = "rebuild requests and invalidations"
TASKS = "queued tasks"


def servers(settings: Settings, *, broker: bool = False) -> list[tuple[str, str, str]]:
    """(setting name, URL, what it holds) of each Redis server holding must-not-lose keys:
    the invalidation and lock Redis and, with `broker`, a Redis broker (one server is
    checked once, whatever its database numbers)."""
    found: list[tuple[str, str, str]] = []
    if settings.redis_url:
        found.append(("CACHEWORK_REDIS_URL", settings.redis_url, OURS))
    url = settings.broker_redis_url
    if broker and url is not None:
        if found and server_identity(url) == server_identity(found[0][1]):
            found[0] = (*found[0][:2], f"{OURS} and {TASKS}")
        else:
            found.append(("CACHEWORK_BROKER_URL", url, TASKS))
    return found


def cluster_problem(shown: str, client: redis.Redis) -> str | None:
    """A line when the server is a Redis Cluster node (`cluster_enabled:1` in INFO
    cluster): cachework's Lua scripts and locks use several keys that a cluster spreads
    over different slots (CROSSSLOT, MOVED), so it refuses a cluster instead of failing
    in every task. None when INFO is refused (an ACL user without it): not a cluster
    client's answer either, the first command would say."""
    try:
        info = client.info("cluster")
    except redis.ResponseError:
        return None
    if not int(info.get("cluster_enabled", 0) or 0):
        return None
    return (
        f"{shown}: this Redis is a Redis Cluster node (cluster_enabled:1), which cachework "
        "does not support (the keys of one script land on different slots); use a "
        "standalone Redis, or Redis Sentinel for high availability (sentinel://)"
    )


def check(name: str, url: str, timeout: float = 3.0, holds: str = OURS) -> Verdict:
    """Read `maxmemory` and `maxmemory-policy` of the server at `url` (one CONFIG GET);
    `holds` names what it may lose in the line. A Redis Cluster node is a problem too
    (`cluster_problem`)."""
    shown = f"{name}={mask_url(url)!r}"
    client = client_from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        cluster = cluster_problem(shown, client)
        if cluster:
            return Verdict(problem=cluster)
        config = client.config_get("maxmemory*")
    except redis.ResponseError as exc:  # NOPERM, or CONFIG disabled or renamed
        why = f"CONFIG GET refused: {first_line(exc, 200)}"
        return Verdict(unchecked=_unchecked(shown, why, holds))
    except redis.RedisError as exc:
        return Verdict(unchecked=_unchecked(shown, f"no answer: {first_line(exc, 200)}", holds))
    finally:
        client.close()
    policy = str(config.get("maxmemory-policy", "noeviction"))
    maxmemory = int(config.get("maxmemory", 0) or 0)
    if not evicts(policy, maxmemory):
        return Verdict()
    return Verdict(
        problem=f"{shown}: Redis maxmemory-policy is {policy} with maxmemory {maxmemory}, so "
        f"under memory pressure it may silently evict {holds}; set maxmemory-policy to "
        f"{KEEPING} (redis.conf and CONFIG SET), or maxmemory 0"
    )


def _unchecked(shown: str, why: str, holds: str) -> str:
    return (
        f"{shown}: cannot read Redis maxmemory-policy ({why}); make sure it is {KEEPING} "
        f"(or maxmemory is 0), else under memory pressure Redis may silently evict {holds}"
    )


def refuse_evicting(settings: Settings, *, broker: bool = False, timeout: float = 3.0) -> None:
    """At start-up: ConfigError (one line naming the setting, the policy and the fix) when
    a server may evict our keys; one warning per server whose policy cannot be read."""
    for name, url, holds in servers(settings, broker=broker):
        verdict = check(name, url, timeout, holds)
        if verdict.problem:
            raise ConfigError(verdict.problem)
        if verdict.unchecked:
            log.warning("%s", verdict.unchecked)


def eviction_problems(
    settings: Settings, *, broker: bool = False, timeout: float = 3.0
) -> list[str]:
    """Readiness: a line per server that may evict our keys now (the policy can change at
    run time, CONFIG SET). Unreadable or unreachable servers add none."""
    verdicts = [
        check(name, url, timeout, holds) for name, url, holds in servers(settings, broker=broker)
    ]
    return [v.problem for v in verdicts if v.problem]
