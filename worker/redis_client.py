"""This process's Redis client (locks, invalidation stream), or None when Redis is off.

Made lazily, per process: `after_fork()` forgets the parent's client so a prefork child
opens its own sockets.
"""

from __future__ import annotations

import threading

import redis

from cache.settings import load_settings

_lock = threading.Lock()
_client: redis.Redis | None = None
_url: str | None = None


def get_redis(url: str | None = None) -> redis.Redis | None:
    """The client for `url` (default: CACHEWORK_REDIS_URL, resolved by the settings)."""
    global _client, _url
    url = url if url is not None else load_settings().redis_url
    if url is None:
        return None
    with _lock:
        if _client is None or _url != url:
            if _client is not None:
                _client.close()
            _client = redis.Redis.from_url(
                url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
            )
            _url = url
        return _client


def after_fork() -> None:
    """Drop the parent's client without using its sockets."""
    global _client, _url
    with _lock:
        _client, _url = None, None
