"""Fan-out to many processes (issue 19, item 7): an idle listener costs one blocking read
per block period, an event costs plain stream commands (no script), the gap and epoch
checks still drop, stop() is prompt; the database log's idle polling slows down; one
outbox relay per node, taken over when its holder goes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import (
    DatabaseLog,
    Listener,
    RedisLog,
    Relay,
    RelayLoop,
    Tracker,
    publish,
)
from cachework.cache.invalidation.log import LogUnavailable
from cachework.cache.invalidation.node_lock import NodeLock
from tests.conftest import MODELS, make_env, settings_of, started
from tests.invalidation_helpers import ROOT, FakeTarget, OwnRedis, wait_until


@pytest.fixture
def own_redis(tmp_path):
    with started(OwnRedis(tmp_path / "redis"), "Redis (redis-server)") as server:
        yield server


def _calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (this server is the test's own)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


def _listening(server: OwnRedis, target: FakeTarget, block: float, **kw) -> Listener:
    log = RedisLog.for_listener(server.url, key="test:fan")
    listener = Listener(Tracker(target, log), log, block=block, **kw).start()
    wait_until(lambda: target.listener.get("connected"))
    return listener


def test_an_idle_listener_makes_one_read_per_block_period_and_no_script_call(own_redis):
    client = redis.Redis.from_url(own_redis.url)
    publish("categories", [1], log=RedisLog(client, key="test:fan"))
    target = FakeTarget()
    listener = _listening(own_redis, target, block=0.25)
    try:
        wait_until(lambda: target.keys_seen() == [1] or target.cursor != "0")
        time.sleep(0.1)
        client.config_resetstat()
        time.sleep(1.0)
        calls = _calls(client)
    finally:
        assert listener.stop(timeout=5)
        client.close()
    # 1 s / 0.25 s block = 4 reads (+1 for the one under way); the old loop made a Lua
    # read and an XREAD every block period (evalsha 4-5).
    assert 3 <= calls.get("xread", 0) <= 5, calls
    assert calls.get("evalsha", 0) == 0 and calls.get("eval", 0) == 0, calls


def test_events_are_applied_from_the_blocking_read_at_once_without_a_script(own_redis):
    client = redis.Redis.from_url(own_redis.url)
    target = FakeTarget()
    listener = _listening(own_redis, target, block=5.0)
    try:
        RedisLog(client, key="test:fan").append(publish_json(0))  # the scripts loaded
        wait_until(lambda: target.keys_seen() == [0])
        client.config_resetstat()
        delays = []
        for key in range(1, 21):
            started = time.monotonic()
            client.xadd("test:fan", {"e": publish_json(key)})
            wait_until(lambda key=key: key in target.keys_seen(), timeout=2, every=0.001)
            delays.append(time.monotonic() - started)
        calls = _calls(client)
    finally:
        assert listener.stop(timeout=5)
        client.close()
    assert target.keys_seen() == list(range(21)) and target.dropped == []
    assert max(delays) < 1.0, delays  # woken by the entry, not by the 5 s block's end
    assert calls.get("evalsha", 0) == 0 and calls.get("eval", 0) == 0, calls
    # one XREAD and one XRANGE (the cursor check) per event: 20 each, give or take the one
    # under way at the reset (Redis may count a blocked XREAD before or after it)
    assert 19 <= calls.get("xread", 0) <= 22 and calls.get("xrange", 0) <= 22, calls


def test_entries_trimmed_unread_while_blocked_are_a_gap(own_redis):
    """Three events and a trim in one transaction: the blocked reader is served after it,
    with only the last entry; its cursor's entry is gone, so it drops."""
    client = redis.Redis.from_url(own_redis.url)
    log = RedisLog(client, key="test:fan")
    publish("categories", [1], log=log)
    target = FakeTarget()
    listener = _listening(own_redis, target, block=5.0)
    try:
        wait_until(lambda: target.cursor != "0")
        time.sleep(0.2)  # blocked in XREAD now
        pipe = client.pipeline(transaction=True)
        for key in (2, 3, 4):
            pipe.xadd("test:fan", {"e": publish_json(key)})
        pipe.xtrim("test:fan", maxlen=1, approximate=False)
        pipe.execute()
        wait_until(lambda: target.dropped)
        assert "gap" in target.dropped[0] and target.listener["gaps"] == 1
        assert 2 not in target.keys_seen() and 3 not in target.keys_seen()
        last = publish("categories", [5], log=log)
        wait_until(lambda: target.cursor == last)
        assert target.keys_seen()[-1] == 5 and listener.alive
    finally:
        assert listener.stop(timeout=5)
        client.close()


def test_a_restart_under_a_blocked_read_is_noticed_at_once_and_drops(own_redis):
    client = redis.Redis.from_url(own_redis.url, socket_connect_timeout=0.5)
    target = FakeTarget()
    listener = _listening(own_redis, target, block=5.0)
    try:
        first = publish("categories", [1], log=RedisLog(client, key="test:fan"))
        wait_until(lambda: target.cursor == first)
        started = time.monotonic()
        own_redis.restart()
        wait_until(lambda: any("replaced" in r for r in target.dropped), timeout=5)
        assert time.monotonic() - started < 3.0  # not the 5 s block, nor the read timeout
        client.close()
        event_id = publish("categories", [2], log=RedisLog(client, key="test:fan"))
        wait_until(lambda: target.cursor == event_id)
        assert target.keys_seen()[-1] == 2 and target.listener["reconnects"] >= 1
    finally:
        assert listener.stop(timeout=5)
        client.close()


def test_a_connection_redis_py_reopened_silently_is_read_only_after_a_checked_read(own_redis):
    """redis-py replaces a pooled connection the server closed (a restart or failover
    between two reads) without a word: the blocking read must not follow the new server
    from its old cursor before the checked read has compared the epoch."""
    admin = redis.Redis.from_url(own_redis.url)
    log = RedisLog.for_listener(own_redis.url, key="test:fan")
    try:
        first = publish("categories", [1], log=RedisLog(admin, key="test:fan"))
        log.state()  # the checked read
        entries, confirmed = log.follow(first, 10, 0.05)
        assert entries == [] and confirmed  # at the head, on a checked connection
        admin.client_kill_filter(_type="normal", skipme=True)  # the listener's connection
        publish("categories", [2], log=RedisLog(admin, key="test:fan"))
        with pytest.raises(LogUnavailable, match="reconnected since the last checked read"):
            log.follow(first, 10, 0.05)
        log.read(first)  # the checked read on the new connection
        entries, confirmed = log.follow(first, 10, 0.05)
        assert len(entries) == 1 and confirmed
    finally:
        log.close()
        admin.close()


def test_stop_breaks_off_a_blocked_read_promptly(own_redis):
    target = FakeTarget()
    listener = _listening(own_redis, target, block=5.0)
    time.sleep(0.3)  # blocked in XREAD
    started = time.monotonic()
    assert listener.stop(timeout=5)
    assert time.monotonic() - started < 1.0
    assert target.dropped == [] and target.listener["connected"] is False


def test_an_idle_database_log_listener_polls_at_its_idle_interval(sqlite_url):
    engine = _engine_with_tables(sqlite_url)

    class Counting(DatabaseLog):
        reads = 0

        def read(self, after, count=500):
            Counting.reads += 1
            return super().read(after, count)

    log = Counting(engine, poll_interval=0.02, idle_interval=0.5, busy_for=0.2)
    target = FakeTarget()
    listener = Listener(Tracker(target, log), log).start()
    try:
        wait_until(lambda: target.listener.get("connected"))
        publish("categories", [1], log=log)
        wait_until(lambda: target.keys_seen() == [1], timeout=3)
        time.sleep(0.3)  # past busy_for: idle now
        before = Counting.reads
        time.sleep(1.5)
        idle_reads = Counting.reads - before
        started = time.monotonic()
        publish("categories", [2], log=log)
        wait_until(lambda: target.keys_seen() == [1, 2], timeout=3)
        took = time.monotonic() - started
    finally:
        assert listener.stop(timeout=5)
        engine.dispose()
    assert 2 <= idle_reads <= 5, idle_reads  # at poll_interval throughout: 75
    assert took < 1.0


# --- one outbox relay per node --------------------------------------------------------------


class CountingRelay(Relay):
    def __init__(self, engine):
        super().__init__(engine, DatabaseLog(engine))
        self.reads = 0

    def run_once(self) -> int:
        self.reads += 1
        return super().run_once()


def test_only_one_relay_per_node_polls_and_another_takes_over(tmp_path, sqlite_url):
    engine = _engine_with_tables(sqlite_url)
    lock_of = lambda: NodeLock.for_relay("db", sqlite_url, folder=str(tmp_path))  # noqa: E731
    relays = [CountingRelay(engine) for _ in range(3)]
    loops = [
        RelayLoop(r, interval=0.05, elector=lock_of(), retry_every=0.05).start() for r in relays
    ]
    try:
        time.sleep(1.0)
        polling = [r for r in relays if r.reads]
        assert len(polling) == 1 and polling[0].reads >= 5
        holder = relays.index(polling[0])
        assert [loop.elected for loop in loops] == [i == holder for i in range(3)]
        assert loops[holder].stop(timeout=5)
        wait_until(lambda: sum(1 for i, r in enumerate(relays) if i != holder and r.reads) == 1)
        time.sleep(0.3)
        assert sum(1 for i, r in enumerate(relays) if i != holder and r.reads) == 1
    finally:
        for loop in loops:
            loop.stop(timeout=5)
        engine.dispose()


_HOLDER = """
import sys, time
from cachework.cache.invalidation.node_lock import NodeLock
lock = NodeLock.for_relay("db", "x", folder=sys.argv[1])
print(lock.acquire(), flush=True)
time.sleep(60)
"""


def test_a_killed_holder_releases_the_node_lock_and_a_forked_child_never_holds_it(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "True"
        lock = NodeLock.for_relay("db", "x", folder=str(tmp_path))
        assert not lock.acquire()
        proc.kill()
        proc.wait(10)
        assert wait_until(lock.acquire, timeout=2)
        pid = os.fork()
        if pid == 0:  # the child inherits the descriptor: it must not count as holding
            other = NodeLock.for_relay("db", "x", folder=str(tmp_path))
            os._exit(0 if not lock.held and not other.acquire() else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert lock.held  # the parent still does
        lock.release()
        assert NodeLock.for_relay("db", "x", folder=str(tmp_path)).acquire()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        proc.stdout.close()


def test_two_runtimes_on_one_node_run_one_polling_relay(tmp_path, monkeypatch):
    from cachework.worker.runtime import Runtime

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # this test's own lock folder
    url = f"sqlite:///{tmp_path / 'node.db'}"
    env = make_env(tmp_path, database_url=url, redis_url="off", cached_tables="off")
    runtimes = [Runtime(settings_of(env)) for _ in range(2)]
    _engine_with_tables(url).dispose()
    try:
        for runtime in runtimes:
            runtime.start(relay=True)
        wait_until(lambda: any(r._relay.passes for r in runtimes))
        time.sleep(0.5)
        assert sorted(bool(r._relay.passes) for r in runtimes) == [False, True]
        assert sorted(r._relay.elected for r in runtimes) == [False, True]
        holder = next(r for r in runtimes if r._relay.passes)
        other = next(r for r in runtimes if r is not holder)
        holder.stop()
        wait_until(lambda: other._relay.passes, timeout=3)
    finally:
        for runtime in runtimes:
            runtime.close()


def test_the_lock_file_is_named_by_a_hash_of_its_identity():
    one = NodeLock.for_relay("postgresql://u:***@h/db", "redis://h:6379/0", folder="/x")
    assert re.fullmatch(r"cachework-relay-[0-9a-f]{20}\.lock", one.path.name)
    same = NodeLock.for_relay("postgresql://u:***@h/db", "redis://h:6379/0", folder="/x")
    other = NodeLock.for_relay("postgresql://u:***@h/db2", "redis://h:6379/0", folder="/x")
    assert one.path == same.path != other.path


def publish_json(key: int) -> str:
    from cachework.cache.invalidation.events import Event

    return Event("categories", (key,)).to_json()


def _engine_with_tables(url: str) -> sa.Engine:
    from cachework.worker.schema import create_tables

    engine = sa.create_engine(url)
    create_tables(engine, MODELS)
    return engine
