"""Health facts of a process, each a short line naming what is wrong (no Celery here).

`liveness(runtime)`: the database and Redis (when configured) answer. `runtime_listener`:
this process's invalidation listener has not been cut off from the log longer than
`CACHEWORK_LISTENER_STALE_AFTER`. `readiness(runtime)`: both, and Redis may not evict
cachework's keys (`cachework/redis_policy.py`: its policy can change at run time).
`listener_problems(folder, ...)`: the same for every live process whose metrics are
written to a multiprocess folder (a worker node's children). The worker adds the broker
and the workers (`worker/health.py`).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cachework import redis_policy
from cachework.errors import first_line
from cachework.pooler import connect_args
from cachework.redis_client import client_from_url
from cachework.settings import mask_url

if TYPE_CHECKING:
    from worker.runtime import Runtime

LAST_CONTACT = "cachework_invalidation_listener_last_contact_timestamp_seconds"
CONNECTED = "cachework_invalidation_listener_connected"


def check_database(url: str, timeout: float = 3.0) -> str | None:
    """None when `SELECT 1` runs on a fresh connection, else why not (one line)."""
    args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        args = {"connect_timeout": max(1, round(timeout)), **connect_args(url)}
    elif url.startswith("sqlite"):
        args = {"timeout": timeout}
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        shown = engine.url.render_as_string(hide_password=True)
        return f"database unreachable (CACHEWORK_DATABASE_URL={shown}): {first_line(exc)}"
    finally:
        engine.dispose()
    return None


def check_redis(url: str | None, timeout: float = 3.0) -> str | None:
    """None when Redis answers PING (or is not configured), else why not."""
    if url is None:
        return None
    client = client_from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:
        return f"Redis unreachable (CACHEWORK_REDIS_URL={mask_url(url)}): {first_line(exc)}"
    finally:
        client.close()
    return None


def liveness(runtime: Runtime, timeout: float = 3.0) -> list[str]:
    """The database and Redis of `runtime`'s settings answer (fresh connections)."""
    s = runtime.settings
    problems = [check_database(s.database_url, timeout), check_redis(s.redis_url, timeout)]
    return [p for p in problems if p]


def readiness(runtime: Runtime, timeout: float = 3.0) -> list[str]:
    """A web process's readiness: liveness, its listener, and a Redis that keeps our keys."""
    problems = liveness(runtime, timeout)
    if not problems:
        problems = redis_policy.eviction_problems(runtime.settings, timeout=timeout)
    return problems + runtime_listener(runtime)


def cut_off(last_contact: float | None, stale_after: float, now: float) -> float | None:
    """Seconds a listener has been out of touch, when that is longer than `stale_after`."""
    if last_contact is None:
        return None
    away = now - last_contact
    return away if away > stale_after else None


def runtime_listener(runtime: Runtime, now: float | None = None) -> list[str]:
    """This process's listener, if it has one, was in touch within the stale bound."""
    if runtime._tracker is None:
        return []
    sampler = runtime.sampler
    sampler.sync()
    stale_after = runtime.settings.listener_stale_after
    away = cut_off(sampler.last_contact, stale_after, now or time.time())
    if away is None and runtime.listening:
        return []
    if away is None:
        return [f"pid {os.getpid()}: invalidation listener not running"]
    return [_cut_off_line(os.getpid(), away, stale_after)]


def _cut_off_line(pid: int | str, away: float, stale_after: float) -> str:
    return (
        f"pid {pid}: invalidation listener cut off from the log for {away:.1f}s "
        f"(CACHEWORK_LISTENER_STALE_AFTER={stale_after:g})"
    )


def listeners(folder: str) -> dict[int, dict[str, float]]:
    """The listener of every live process writing to the multiprocess `folder`: pid ->
    {"connected", "last_contact"}. Processes gone (killed before they could say so) are
    marked dead and left out."""
    from prometheus_client import multiprocess

    found: dict[int, dict[str, float]] = {}
    if not os.path.isdir(folder):
        return found
    for metric in multiprocess_metrics(folder):
        if metric.name not in (LAST_CONTACT, CONNECTED):
            continue
        for sample in metric.samples:
            pid = int(sample.labels.get("pid", 0))
            key = "last_contact" if metric.name == LAST_CONTACT else "connected"
            found.setdefault(pid, {})[key] = sample.value
    for pid in list(found):
        if not alive(pid):
            multiprocess.mark_process_dead(pid, folder)
            del found[pid]
    return found


def multiprocess_metrics(folder: str) -> list:
    import glob

    from prometheus_client import multiprocess

    files = glob.glob(os.path.join(folder, "gauge_liveall_*.db"))
    return list(multiprocess.MultiProcessCollector.merge(files, accumulate=False))


def listener_problems(
    states: dict[int, dict[str, float]], stale_after: float, now: float | None = None
) -> list[str]:
    """A line for every listener out of touch longer than `stale_after`."""
    now = time.time() if now is None else now
    problems = []
    for pid, state in sorted(states.items()):
        away = cut_off(state.get("last_contact"), stale_after, now)
        if away is not None:
            problems.append(_cut_off_line(pid, away, stale_after))
    return problems


def alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
