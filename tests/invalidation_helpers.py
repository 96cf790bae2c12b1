"""Helpers for the invalidation tests: a fake cached-table registry, a Redis server of the
test's own (to restart it), and bounded waiting."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
import sqlalchemy as sa

from cachework.errors import ValidationError
from cachework.schema import invalidation_outbox

ROOT = Path(__file__).resolve().parent.parent


class FakeTarget:
    """Records what the listener does; the shape of cachework.cache.tables.registry.Registry."""

    def __init__(self, names: tuple[str, ...] = ("categories",)) -> None:
        self.cursor = "0"
        self.listener: dict = {}
        self._names = list(names)
        self.invalidated: list[tuple[str, list | None]] = []
        self.dropped: list[str] = []
        self.gate: threading.Event | None = None  # when set up, invalidate() waits on it
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._names)

    def coerce_key(self, name: str, key: object) -> object:
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise ValidationError(f"{name} key={key!r} is not an integer")
        try:
            return int(key)
        except ValueError:
            raise ValidationError(f"{name} key={key!r} is not an integer") from None

    def invalidate(self, name: str, keys: list | None) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        with self.lock:
            self.invalidated.append((name, None if keys is None else list(keys)))

    def drop_all(self, reason: str) -> None:
        with self.lock:
            self.dropped.append(reason)

    def keys_seen(self) -> list:
        with self.lock:
            return [k for _n, keys in self.invalidated for k in (keys or [None])]


class LoadedTarget(FakeTarget):
    """A FakeTarget whose tables report records loaded (the registry's `status()`)."""

    def status(self) -> dict[str, dict]:
        return {name: {"loaded": True} for name in self._names}


def outbox_count(engine: sa.Engine) -> int:
    """Rows waiting in cachework's outbox (committed, not relayed yet)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(invalidation_outbox)).scalar()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, every=0.01) -> object:
    """Poll `predicate` until truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnRedis:
    """A redis-server of the test's own on a free loopback port, no persistence, so a
    restart loses everything (like a crashed cache server). `args`: more server options
    (e.g. `("--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru")`)."""

    def __init__(self, folder: Path, args: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.port = free_port()
        self.args = tuple(args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> OwnRedis:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                "--protected-mode", "yes", *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: _pings(client), timeout=timeout, every=0.05)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# A relay in a process of its own that stalls right after appending to the log (before its
# outbox transaction commits), so the test can kill -9 it there.
_STALLING_RELAY = """
import sys, time
import redis, sqlalchemy as sa
from cachework.cache.invalidation import DatabaseLog, RedisLog, Relay

url, target, key = sys.argv[1:4]
engine = sa.create_engine(url)

def stall():
    print("appended", flush=True)
    time.sleep(600)

class SameDatabase(DatabaseLog):
    def append_in(self, conn, datas):
        ids = super().append_in(conn, datas)
        stall()
        return ids

class Stream(RedisLog):
    def append(self, data):
        event_id = super().append(data)
        stall()
        return event_id

if target == "same-database":
    log = SameDatabase(engine)
else:
    log = Stream(redis.Redis.from_url(target), key=key)
Relay(engine, log).run_once()
"""


def kill_relay_after_append(database_url: str, target: str, key: str = "", timeout=30) -> None:
    """Run a relay in a subprocess, kill -9 it once it appended to the log (`target` is a
    redis:// URL or "same-database"), and reap it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLING_RELAY, database_url, target, key],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    try:
        if not lines or "appended" not in lines[0]:
            proc.kill()
            raise AssertionError(f"the relay did not append: {proc.stderr.read()[-2000:]}")
        proc.kill()
    finally:
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
