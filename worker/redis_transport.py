"""kombu's Redis and Sentinel transports, made to survive a failover.

Behind a proxy or a fixed address, a failover leaves the worker's connections on the old
master, now a replica: its `READONLY` replies (and the `UNBLOCKED` error that cuts a
waiting BRPOP) are command errors to kombu, which Celery's consumer takes as
unrecoverable, so the worker exited for good. Here they drop the connection and raise
`ConnectionError` (cachework/redis_client.py `FailoverAwareConnection`), so the consumer
reconnects, as it does after any lost connection, and reaches the new master.
`sentinel://` connections ask the sentinels where the master is (on every connect, and
before every message published: `SentinelChannel._put`); redis-py's do the same
for READONLY and UNBLOCKED, ours also for NOREPLICAS (an old master with
`min-replicas-to-write` refuses writes once Sentinel took its replica away).

Both transports also survive a master that is gone: when Celery closes the broken
connection, kombu's channel tries to give back its unacknowledged messages through a
client it rebuilds from a transport whose connection is already closed, and the
AttributeError it met there ("'NoneType' object has no attribute 'hostname'") was fatal
to the worker. It is a ConnectionError here, which the close ignores; the messages are
restored by the visibility timeout, as for a worker that died.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from cachework.redis_client import (
    FailoverAwareConnection,
    FailoverAwareSentinelConnection,
    FailoverAwareSentinelSSLConnection,
    FailoverAwareSSLConnection,
    follow_pool_master,
)


class _ClosedIsLost:
    """A channel whose connection was closed raises ConnectionError for a new client."""

    def _connparams(self, asynchronous: bool = False) -> dict:
        if getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous)


class Channel(_ClosedIsLost, kombu_redis.Channel):
    connection_class = FailoverAwareConnection
    connection_class_ssl = FailoverAwareSSLConnection


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_ClosedIsLost, kombu_redis.SentinelChannel):
    connection_class = FailoverAwareSentinelConnection
    connection_class_ssl = FailoverAwareSentinelSSLConnection

    def _put(self, queue: str, message: dict, **kwargs: object) -> None:
        """Publish on the server that is the master now: after SENTINEL FAILOVER the old
        master keeps taking pushes on the connections opened before the switch until
        Sentinel demotes it, and drops them then (cachework/redis_client.py `follow_master`).
        One short question to a sentinel per message."""
        follow_pool_master(self.pool)
        return super()._put(queue, message, **kwargs)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
