"""The individual dependency checks: does the database, Redis or the broker answer?

Each check connects once, within `timeout`, and returns one line naming the setting and
what went wrong (None or no line: healthy). The start-up forms (`check_database`,
`check_broker`) raise that line as a ConfigError instead. Liveness and readiness combine
them (`worker/health.py`); `worker/probes.py` runs them in parallel.

Clients are imported when a check runs: `cachework health` starts a process every time,
and the database driver loads while the broker's answer is awaited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kombu import Connection

from cachework.errors import ConfigError, first_line
from cachework.pooler import connect_args
from cachework.redis_client import client_from_url
from cachework.redis_policy import eviction_problems
from cachework.settings import Settings, mask_url

if TYPE_CHECKING:
    import sqlalchemy as sa


def database_problem(target: str | sa.Engine, timeout: float = 3.0, limit: int = 300) -> str | None:
    """None when `SELECT 1` runs, else why not (one line). `target`: a URL (a fresh
    connection, bounded by `timeout`) or an engine (one of its pooled connections)."""
    import sqlalchemy as sa

    engine = target if isinstance(target, sa.Engine) else _probe_engine(target, timeout)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        shown = mask_url(engine.url.render_as_string(hide_password=True))
        return f"database unreachable (CACHEWORK_DATABASE_URL={shown}): {first_line(exc, limit)}"
    finally:
        if engine is not target:
            engine.dispose()
    return None


def _probe_engine(url: str, timeout: float) -> sa.Engine:
    import sqlalchemy as sa

    args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        args = {"connect_timeout": max(1, round(timeout)), **connect_args(url)}
    elif url.startswith("sqlite"):
        args = {"timeout": timeout}
    return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=args)


def check_database(target: str | sa.Engine, timeout: float = 3.0) -> None:
    """`database_problem` at start-up: a ConfigError with its line (the whole first line
    of the driver's error: a pooler's hint can be long)."""
    problem = database_problem(target, timeout, limit=10_000)
    if problem is not None:
        raise ConfigError(problem)


def redis_problem(url: str | None, timeout: float = 3.0) -> str | None:
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


def redis_problems(
    settings: Settings, timeout: float = 3.0, *, eviction: bool = True, broker: bool = True
) -> list[str]:
    """Redis (when configured) answers, and (`eviction`) no Redis of ours (with `broker`,
    the broker's included) may evict cachework's keys now: its policy can change at run
    time (`cachework/redis_policy.py`)."""
    down = redis_problem(settings.redis_url, timeout)
    if down or not eviction:
        return [down] if down else []
    return eviction_problems(settings, broker=broker, timeout=timeout)


def broker_problem(settings: Settings, timeout: float = 3.0) -> str | None:
    """None when the broker accepts a connection, else why not."""
    try:
        check_broker(settings, timeout)
    except ConfigError as exc:
        return f"broker unreachable: {exc}"
    return None


def check_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Connect to the broker once; ConfigError naming CACHEWORK_BROKER_URL if it fails."""
    options: dict = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if settings.broker_url.startswith("filesystem"):
        options = {}
    elif settings.broker_transport_options.get("master_name"):  # sentinel://
        sentinels = dict(settings.broker_transport_options.get("sentinel_kwargs") or {})
        sentinels.update(socket_connect_timeout=timeout, socket_timeout=timeout)
        options.update(settings.broker_transport_options, sentinel_kwargs=sentinels)
    shown = mask_url(settings.broker_url)
    try:
        conn = Connection(
            settings.broker_url,
            transport=settings.broker_transport,
            connect_timeout=timeout,
            transport_options=options,
        )
    except Exception as exc:  # kombu refuses the URL itself (e.g. ?password=)
        raise ConfigError(
            f"CACHEWORK_BROKER_URL={shown!r} is not a URL the broker client accepts "
            f"({exc.__class__.__name__}); put the password in the user part, percent-encoded"
        ) from None
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:
        raise ConfigError(
            f"CACHEWORK_BROKER_URL={shown!r} cannot be reached: {mask_url(first_line(exc))}"
        ) from None
    finally:
        conn.release()
