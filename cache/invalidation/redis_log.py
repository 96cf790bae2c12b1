"""The invalidation log as a Redis Stream (when Redis is configured).

`XADD ... MAXLEN ~ n` keeps the stream bounded; readers use plain `XRANGE`/`XREAD` from
their own cursor (no consumer groups), so every process sees every entry. Each call is
one round trip: small Lua scripts read the epoch key and the stream together, so the gap
and epoch checks are atomic with the read they guard.

The epoch is the stored epoch key plus the server's run id. The key alone survives a
restart with persistence (RDB, AOF everysec) that lost the stream's newest entries, and a
reader whose cursor is older than the lost entries would then miss them silently; the run
id changes at every restart, so every reader drops its tables instead.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachework.cache.invalidation.log import LISTEN_BLOCK, NOTHING, Batch, LogState, log_failure
from cachework.errors import CacheworkError
from cachework.redis_client import client_from_url, follow_master

STREAM_KEY = "cachework:invalidations"
# Seconds between a listener's questions to the sentinels (Sentinel only) of whether the
# master moved (see `follow_master`; a task-start catch-up asks every time).
MASTER_CHECK_INTERVAL = 1.0
FIELD = b"e"

# Every script makes sure the epoch key exists, so all readers agree on one epoch; the
# server's run id is part of it (a restart is a new epoch even if the key was persisted).
_EPOCH = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then epoch = ARGV[1]; redis.call('SET', KEYS[2], epoch) end
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if run then epoch = epoch .. ':' .. run end
"""
APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[1]) end
return id
"""
# XINFO STREAM as a table (nil when the stream does not exist). Redis 7 adds
# `entries-added`, which tells a reader at "0" that entries came and went unread.
_INFO = """
local info = nil
if redis.call('EXISTS', KEYS[1]) == 1 then
  info = {}
  local flat = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
end
"""
# The head is the newest entry; for a stream trimmed to nothing, the last id it handed
# out (a reader there has missed nothing), so a cursor of "0" means "never any entry".
STATE = (
    _EPOCH
    + _INFO
    + """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local head = '0'
if #last > 0 then head = last[1][1]
elseif info and info['last-generated-id'] and info['last-generated-id'] ~= '0-0' then
  head = info['last-generated-id']
end
return {epoch, head}
"""
)
READ = (
    _EPOCH
    + _INFO
    + """
local gap = 0
local entries
if ARGV[2] == '0' then
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[3])
  -- a reader that has seen nothing: entries added and already removed are lost to it
  local added = info and info['entries-added']
  if added and tonumber(added) > tonumber(info['length']) then gap = 1 end
else
  entries = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', tonumber(ARGV[3]) + 1)
  if #entries > 0 and entries[1][1] == ARGV[2] then
    table.remove(entries, 1)
  elseif not (info and info['last-generated-id'] == ARGV[2]) then
    -- the cursor's entry is gone (trimmed, or the stream deleted): entries may be lost
    gap = 1
  end
end
return {epoch, gap, entries}
"""
)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unavailable(exc: redis.RedisError) -> CacheworkError:
    return log_failure(exc, "invalidation stream")


class _Connects:
    """Counts the connections a client opens (redis-py's `redis_connect_func`): redis-py
    opens a new one silently when it finds a pooled connection closed, and a reader must
    not follow a new server (a restart, a failover) without reading its epoch first."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, connection: redis.connection.AbstractConnection) -> None:
        self.count += 1
        connection.on_connect()


class RedisLog:
    """A Redis Stream `key` (plus `key:epoch`), trimmed to about `maxlen` entries."""

    def __init__(self, client: redis.Redis, key: str = STREAM_KEY, maxlen: int = 100_000):
        self.client = client
        self.key = key
        self.epoch_key = f"{key}:epoch"
        self.maxlen = maxlen
        self._master_checked = 0.0
        # A listener's log (`for_listener`) counts its connections: `follow` reads only on
        # one its last checked read (`state`, `read`) ran on or after.
        self._connects: _Connects | None = None
        self._checked_at = 0
        self._append = client.register_script(APPEND)
        self._state = client.register_script(STATE)
        self._read = client.register_script(READ)

    @classmethod
    def for_listener(cls, url: str, key: str = STREAM_KEY, maxlen: int = 100_000) -> RedisLog:
        """A log on a connection of its own that never retries behind the caller's back:
        a listener must see every disconnect (it checks the epoch after reconnecting)."""
        connects = _Connects()
        client = client_from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=LISTEN_BLOCK + 5,  # longer than a blocking read (`follow`)
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            redis_connect_func=connects,
        )
        log = cls(client, key, maxlen)
        log._connects = connects
        return log

    def append(self, data: str) -> str:
        """Store one event; returns its id. On the server that is the master now (see
        `follow_master`: where a reader that starts a task next will look)."""
        try:
            follow_master(self.client)
            new_epoch = uuid.uuid4().hex
            return _text(self._append([self.key, self.epoch_key], [new_epoch, self.maxlen, data]))
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def append_many(self, datas: list[str]) -> list[str]:
        """Store several events in one round trip (a pipeline); returns their ids."""
        try:
            follow_master(self.client)
            pipe = self.client.pipeline(transaction=False)
            for data in datas:
                self._append(
                    [self.key, self.epoch_key], [uuid.uuid4().hex, self.maxlen, data], pipe
                )
            return [_text(entry_id) for entry_id in pipe.execute()]
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def state(self) -> LogState:
        """The epoch and head, on the server that is the master now (see `follow_master`:
        the task-start catch-up must read where a writer that just connected wrote)."""
        try:
            follow_master(self.client)
            epoch, head = self._state([self.key, self.epoch_key], [uuid.uuid4().hex])
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        self._checked()
        return LogState(_text(epoch), _text(head))

    def _checked(self) -> None:
        """A checked read succeeded: `follow` may read on the connections opened so far
        (a connection opened during the read is the one the read ran on)."""
        if self._connects is not None:
            self._checked_at = self._connects.count

    def read(self, after: str, count: int = 500) -> Batch:
        args = [uuid.uuid4().hex, after, count]
        try:
            epoch, gap, raw = self._read([self.key, self.epoch_key], args)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        self._checked()
        entries: list[tuple[str, object]] = []
        for entry_id, fields in raw:
            pairs = dict(zip(fields[::2], fields[1::2], strict=False))
            entries.append((_text(entry_id), pairs.get(FIELD, pairs.get("e", pairs))))
        return Batch(_text(epoch), bool(gap), entries)

    def follow(self, after: str, count: int, timeout: float) -> tuple[list, bool]:
        """Block up to `timeout` seconds for entries after the entry `after`; returns them
        (oldest first, at most `count`) and whether that entry was still in the stream
        after the read (then no entry between it and those read was trimmed unread).

        The listener's idle read: `XREAD BLOCK` with `XRANGE after after` pipelined behind
        it (served once the read returns), two plain commands and no script, so an idle
        process costs one call per `timeout` and an event about two XREADs. Sent on a
        connection of the pool as one write and read back raw: redis-py's pipeline and
        reply parsing cost more per event than the commands themselves. No epoch check:
        a restart or failover breaks the connection, and the reconnect reads the epoch
        (`read`/`state`)."""
        now = time.monotonic()
        if now - self._master_checked >= MASTER_CHECK_INTERVAL:
            self._master_checked = now
            try:
                follow_master(self.client)
            except redis.RedisError as exc:
                raise _unavailable(exc) from exc
        pool = self.client.connection_pool
        conn = pool.get_connection()
        if self._connects is not None and self._connects.count > self._checked_at:
            # redis-py opened a new connection since the last checked read (the server
            # closed the old one: a restart, a failover): the epoch decides first.
            pool.release(conn)
            raise _unavailable(redis.ConnectionError("reconnected since the last checked read"))
        try:
            conn.send_packed_command(
                conn.pack_commands(
                    [
                        ("XREAD", "COUNT", count, "BLOCK", max(1, int(timeout * 1000)),
                         "STREAMS", self.key, after),
                        ("XRANGE", self.key, after, after, "COUNT", 1),
                    ]
                )
            )  # fmt: skip
            reply = conn.read_response()
            mine = conn.read_response()
        except BaseException as exc:
            conn.disconnect()  # a reply may be left unread: never reuse this connection
            if isinstance(exc, redis.RedisError):
                raise _unavailable(exc) from exc
            raise
        finally:
            pool.release(conn)
        if isinstance(reply, dict):  # RESP3: {key: entries}
            reply = list(reply.items())
        entries: list[tuple[str, object]] = []
        for _key, rows in reply or []:
            for entry_id, fields in rows:
                pairs = dict(zip(fields[::2], fields[1::2], strict=False))
                entries.append((_text(entry_id), pairs.get(FIELD, pairs.get("e", pairs))))
        return entries, bool(mine)

    def interrupt(self) -> None:
        """Break off a read blocked in another thread (its connection is shut down; the
        reader sees a lost connection). The listener's `stop()` calls this."""
        self.client.connection_pool.disconnect()

    def wait(self, after: str, timeout: float, stop: threading.Event) -> None:
        if stop.is_set():
            return
        start = "0-0" if after == NOTHING else after
        try:
            self.client.xread({self.key: start}, count=1, block=max(1, int(timeout * 1000)))
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self.client.connection_pool.disconnect()

    def trim(self, maxlen: int) -> int:
        """Trim exactly to `maxlen` entries (tests, operators); returns entries removed."""
        try:
            return int(self.client.xtrim(self.key, maxlen=maxlen, approximate=False))
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
