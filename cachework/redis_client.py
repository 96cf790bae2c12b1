"""The one way cachework makes a Redis client from a URL: a plain Redis (`redis://`,
`rediss://`, `unix://`) or the master of a Sentinel group (`sentinel://`).

A Sentinel URL lists the sentinels as kombu's transport does, separated by ';', and
names the group's master in its query (settings put `CACHEWORK_REDIS_MASTER_NAME` there):

    sentinel://[user:password@]h1:26379;sentinel://h2:26379;sentinel://h3:26379/0?master_name=m

The user part (of any listed sentinel) and the database number are the master's; the
sentinels' own credentials are `sentinel_username=` and `sentinel_password=` in the query
(settings put `CACHEWORK_REDIS_SENTINEL_USERNAME`/`_PASSWORD` there; `mask_url` hides
them). The client asks the sentinels for the master's address on every new connection, so
after a failover it reconnects to the new master by itself; a connection still open to a
demoted master turns the replica's `READONLY` reply into a `ConnectionError` (redis-py's
`SentinelManagedConnection`, and NOREPLICAS here: `FailoverAwareSentinelConnection`),
which callers already treat as transient.

A plain URL may reach Redis through a proxy (HAProxy, Envoy, a cloud endpoint) that keeps
its open connections on a demoted master: there `READONLY` (and the `UNBLOCKED` of a
blocking read cut by the demotion) drops the connection and is raised as a
`ConnectionError`, so the next command connects again and reaches the new master
(`FailoverAwareConnection`; the worker's Redis broker uses it too, worker/redis_transport.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from cachework.errors import ConfigError
from cachework.settings import mask_url

SENTINEL_PORT = 26379
# Query parameters of a sentinel:// URL that are not connection options of the master.
_SENTINEL_PARAMS = ("master_name", "sentinel_username", "sentinel_password")


# A master demoted to a replica unblocks every blocking command (BRPOP, XREAD) with this.
DEMOTED_UNBLOCKED = "UNBLOCKED force unblock from blocking operation, instance state changed"
# A master with `min-replicas-to-write` that lost its replicas (as an old master does the
# moment Sentinel promotes its replica) refuses writes with this.
NO_REPLICAS = "NOREPLICAS"


def _demoted(exc: ResponseError) -> str | None:
    """Why `exc` says this server no longer takes writes as the master (None: it does not)."""
    if isinstance(exc, ReadOnlyError):
        return "Redis is a read-only replica now"
    text = str(exc)
    if text.startswith(DEMOTED_UNBLOCKED):
        return "Redis was demoted to a replica"
    if text.startswith(NO_REPLICAS):
        return "Redis lost the replicas min-replicas-to-write asks for"
    return None


class _FailoverAware:
    """Treats "this server is not a writable master now" (READONLY, UNBLOCKED by a
    demotion, NOREPLICAS) as a lost connection: disconnects (so the next connect reaches
    whatever master is behind the address, or the sentinels name) and raises
    ConnectionError, which redis-py's retry, kombu and `is_transient` handle as such. A
    ResponseError would otherwise be a command error: kombu's consumer takes it as
    unrecoverable and the worker exits for good."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            why = _demoted(exc)
            if why is None:
                raise
            self.disconnect()
            raise RedisConnectionError(f"{why}: {exc}") from exc


class FailoverAwareConnection(_FailoverAware, redis.Connection):
    """A plain connection (redis://) that takes a demoted master as a lost connection."""


class FailoverAwareSSLConnection(_FailoverAware, redis.SSLConnection):
    """`FailoverAwareConnection` over TLS (rediss://)."""


class FailoverAwareSentinelConnection(_FailoverAware, SentinelManagedConnection):
    """A Sentinel-managed connection that also takes NOREPLICAS as a lost connection
    (redis-py's already does for READONLY and UNBLOCKED)."""


class FailoverAwareSentinelSSLConnection(_FailoverAware, SentinelManagedSSLConnection):
    """`FailoverAwareSentinelConnection` over TLS."""


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed sentinel:// URL: the sentinels, the master's name, and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel(url: str) -> bool:
    """True for a `sentinel://` URL (or `;`-separated list of them)."""
    return url.split("://", 1)[0].lower() == "sentinel"


def parse_sentinel_url(url: str, name: str = "CACHEWORK_REDIS_URL") -> SentinelTarget:
    """The sentinels, master name, database and credentials of a sentinel:// URL (query
    parameters of any listed sentinel count); ConfigError naming `name` when malformed."""
    shown = f"{name}={mask_url(url)!r}"
    sentinels: list[tuple[str, int]] = []
    query: dict[str, str] = {}
    db: int | None = None
    username = password = None
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        if not is_sentinel(part):
            raise ConfigError(f"{shown}: every ';'-separated URL must be sentinel://host:port")
        parts = urlsplit(part)
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError:
            raise ConfigError(f"{shown}: a sentinel's port is not a number") from None
        if not parts.hostname:
            raise ConfigError(f"{shown}: a sentinel has no host")
        sentinels.append((parts.hostname, port))
        if parts.username or parts.password:
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ConfigError(f"{shown}: database {path!r} is not a number")
            db = int(path)
        query.update(parse_qsl(parts.query))
    master = query.get("master_name", "").strip()
    if not sentinels:
        raise ConfigError(f"{shown} lists no sentinel")
    if not master:
        raise ConfigError(
            f"{shown} names no master: set CACHEWORK_REDIS_MASTER_NAME (the name in "
            "`sentinel monitor <name> ...`) or add ?master_name=<name>"
        )
    return SentinelTarget(
        sentinels=tuple(sentinels),
        master_name=master,
        db=db or 0,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


class SentinelRedis(redis.Redis):
    """The master of a Sentinel group; `close()` also closes the connections to the
    sentinels (a health check makes and closes one client per call)."""

    sentinel: Sentinel | None = None

    def close(self) -> None:
        super().close()
        sentinel, self.sentinel = self.sentinel, None
        for client in sentinel.sentinels if sentinel is not None else ():
            client.close()


def client_from_url(
    url: str,
    *,
    socket_timeout: float | None = None,
    socket_connect_timeout: float | None = None,
    **options: Any,
) -> redis.Redis:
    """A Redis client for `url` (see the module's docstring); `options` are redis-py
    connection options (retry, health_check_interval, ...), for the master of a Sentinel
    group too. Connects lazily: nothing is contacted here."""
    if not is_sentinel(url):
        scheme = url.split("://", 1)[0].lower()
        if scheme in ("redis", "rediss"):
            options.setdefault(
                "connection_class",
                FailoverAwareSSLConnection if scheme == "rediss" else FailoverAwareConnection,
            )
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            **options,
        )
    target = parse_sentinel_url(url)
    # The sentinels answer one short command: bounded like the master's connections.
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout or 5.0,
        "socket_connect_timeout": socket_connect_timeout or 5.0,
    }
    if target.sentinel_username:
        sentinel_kwargs["username"] = target.sentinel_username
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs=sentinel_kwargs,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    client = sentinel.master_for(
        target.master_name,
        redis_class=SentinelRedis,
        connection_class=FailoverAwareSentinelConnection,
    )
    client.sentinel = sentinel
    return client


def follow_master(client: redis.Redis) -> bool:
    """For the master of a Sentinel group: ask the sentinels which server is the master
    now and, if it moved since this client's connections were opened, close them (the next
    command connects to the new master; one in use is closed when it is released). True
    if it moved. A plain client: False, nothing sent.

    Why a reader asks: after `SENTINEL FAILOVER` the old master keeps answering the
    connections opened before the switch, as a master, until Sentinel demotes it seconds
    later. A writer that connects meanwhile writes to the new master, so a reader still on
    the old one would read an invalidation log without the writer's event. Asked before a
    task-start read, the reader follows the writer (both ask the sentinels in the same
    order), and the new master's run id is a new epoch: its cached tables are dropped.
    Raises redis's ConnectionError (MasterNotFoundError) when no sentinel names a master."""
    return follow_pool_master(client.connection_pool)


def follow_pool_master(pool: object) -> bool:
    """`follow_master` for a connection pool (kombu's Sentinel channel has one, no
    client of ours); False, nothing sent, unless it is a Sentinel master's pool."""
    if not isinstance(pool, SentinelConnectionPool):
        return False
    before = pool.master_address
    return pool.get_master_address() != before and before is not None


def server_identity(url: str) -> tuple:
    """What names one server (or one Sentinel group) whatever the database number: two
    URLs with the same identity reach the same keyspace's server."""
    if is_sentinel(url):
        target = parse_sentinel_url(url)
        return ("sentinel", frozenset(target.sentinels), target.master_name)
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or 6379
