"""One owner-token Redis lock, on redis-py's `redis.lock.Lock`, for the rebuild locks of
the project caches and the beat's single-scheduler lock.

redis-py's Lock already takes the lock with `SET NX PX` and renews (`reacquire`) and
releases it with a Lua compare-and-set on the owner's token. Both users need three things
it does not do, and get them here:

- a token chosen up front, not at acquire time: the beat's token names its host and pid
  (the holder shows in Redis), and the rebuild lock compares it in its own script (the
  "taken" names are forgotten only while no other holder has the lock);
- the token shared by every thread (`thread_local=False`): a renewer thread renews the
  lock its rebuild thread took;
- yes/no answers instead of exceptions: `renew()` is False once the lock is no longer
  ours, and `release()` of a lock we do not hold does nothing.
"""

from __future__ import annotations

import contextlib
import uuid

import redis
from redis.exceptions import LockError
from redis.lock import Lock


class TokenLock:
    """A Redis lock at `key` held under `token`, living `ttl_ms` unless renewed."""

    def __init__(
        self, client: redis.Redis, key: str, ttl_ms: int, token: str | None = None
    ) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = token or uuid.uuid4().hex
        self._lock = Lock(client, key, timeout=ttl_ms / 1000, thread_local=False)

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (never waits)."""
        return bool(self._lock.acquire(blocking=False, token=self.token))

    def renew(self) -> bool:
        """Reset the lock's lifetime to `ttl_ms`; False when it is no longer ours."""
        try:
            return bool(self._lock.reacquire())
        except LockError:  # never taken, released, expired or taken over
            return False

    def hold(self) -> bool:
        """Renew the lock if it is ours, else take it if it is free: True while held."""
        return self.renew() or self.acquire()

    def release(self) -> None:
        """Give the lock up if it is still ours (another holder's lock stays)."""
        with contextlib.suppress(LockError):
            self._lock.release()

    def holder(self) -> str | None:
        """The token of whoever holds the lock now."""
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
