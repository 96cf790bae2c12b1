"""Exactly one beat: two real `celery -A cachework.worker beat` processes on one Redis send each
scheduled job once per tick; when the holder of the beat lock dies, the other takes over."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import redis

from cachework.worker.beat import LOCK_KEY
from cachework.worker.spawn import stop_process_group
from tests.conftest import make_env

TICK = 1.0  # CACHEWORK_SYNC_SCHEDULE
TTL = 3.0  # CACHEWORK_BEAT_LOCK_TTL


def _start_beat(env, log_path):
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "cachework.worker",
                "beat",
                "--max-interval",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _holder_pid(client) -> int | None:
    token = client.get(LOCK_KEY)  # host:pid:random
    return int(token.decode().split(":")[1]) if token is not None else None


def _collect(client, seconds: float, beats, logs) -> list[tuple[float, int]]:
    """(arrival time, sender pid) of every cache sync sent during `seconds`."""
    sent: list[tuple[float, int]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw = client.rpop("cache")
        if raw is None:
            assert all(b.poll() is None for b in beats), [p.read_text()[-2000:] for p in logs]
            time.sleep(0.02)
            continue
        headers = json.loads(raw)["headers"]
        assert headers["task"] == "cachework.sync_cache"
        origin = headers["origin"]  # gen<pid>@host
        sent.append((time.monotonic(), int(origin.split("@")[0].removeprefix("gen"))))
    return sent


def _assert_once_per_tick(sent, seconds: float, pid: int) -> None:
    assert {p for _, p in sent} == {pid}, sent
    assert seconds / TICK - 2 <= len(sent) <= seconds / TICK + 1, (len(sent), seconds)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent)]
    assert all(gap > TICK / 2 for gap in gaps), gaps  # never two sends in one tick


def test_two_beats_send_each_job_once_per_tick_and_the_standby_takes_over(tmp_path, redis_url):
    env = make_env(tmp_path, broker_url=redis_url, sync_schedule=str(TICK))
    env["CACHEWORK_BEAT_LOCK_TTL"] = str(TTL)
    beats, logs = [], []
    for name in ("a", "b"):
        env_n = dict(env, CACHEWORK_DATA_DIR=str(tmp_path / name))  # each its own file
        logs.append(tmp_path / f"beat-{name}.log")
        beats.append(_start_beat(env_n, logs[-1]))
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while client.llen("cache") == 0 and time.monotonic() < deadline:
            assert all(b.poll() is None for b in beats), [p.read_text()[-2000:] for p in logs]
            time.sleep(0.05)
        holder_pid = _holder_pid(client)
        (holder,) = [b for b in beats if b.pid == holder_pid]
        (standby,) = [b for b in beats if b is not holder]
        client.delete("cache")

        window = 6.0
        _assert_once_per_tick(_collect(client, window, beats, logs), window, holder_pid)

        os.kill(holder.pid, signal.SIGKILL)  # no release: the lock must expire
        holder.wait(timeout=10)
        killed_at = time.monotonic()
        deadline = killed_at + TTL + 10
        while _holder_pid(client) != standby.pid:
            assert time.monotonic() < deadline, logs[beats.index(standby)].read_text()[-3000:]
            time.sleep(0.05)
        took_over = time.monotonic() - killed_at
        assert took_over < TTL + TTL / 3 + 2, took_over

        # The sends left from the dead holder's last ticks, the catch-up send, then one a tick.
        client.delete("cache")
        window = 5.0
        _assert_once_per_tick(_collect(client, window, [standby], logs), window, standby.pid)
    finally:
        client.close()
        for b in beats:
            stop_process_group(b, timeout=10)


def test_a_beat_that_stops_releases_the_lock(tmp_path, redis_url):
    env = make_env(tmp_path, broker_url=redis_url, sync_schedule="1")
    env["CACHEWORK_BEAT_LOCK_TTL"] = "60"
    beat = _start_beat(env, tmp_path / "beat.log")
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while client.get(LOCK_KEY) is None:
            assert time.monotonic() < deadline and beat.poll() is None
            time.sleep(0.05)
        beat.send_signal(signal.SIGTERM)
        beat.wait(timeout=15)
        assert client.get(LOCK_KEY) is None, (tmp_path / "beat.log").read_text()[-2000:]
    finally:
        client.close()
        stop_process_group(beat, timeout=10)


def test_beat_lock_ttl_setting():
    import pytest

    from cachework.errors import ConfigError
    from cachework.settings import load_settings

    assert load_settings({}).beat_lock_ttl == 30.0
    assert load_settings({"CACHEWORK_BEAT_LOCK_TTL": "5"}).beat_lock_ttl == 5.0
    for bad in ("soon", "0.5"):
        with pytest.raises(ConfigError, match=f"CACHEWORK_BEAT_LOCK_TTL='{bad}'"):
            load_settings({"CACHEWORK_BEAT_LOCK_TTL": bad})
