"""Beat's scheduler: Celery's file schedule, with a Redis lock so that exactly one of any
number of `celery -A cachework.worker beat` processes sends the scheduled jobs.

`celeryconfig` names it (`beat_scheduler`), so building the settings creates nothing and
`celery -A cachework.worker beat` still starts on a data dir that does not exist yet (the folder of
the schedule file is made when beat opens it; Celery's `beat_init` signal comes too late).

With Redis configured (CACHEWORK_REDIS_URL, or a redis:// broker), every beat keeps its
own file schedule but only the holder of the lock `cachework:beat:lock` sends: it takes the
lock (`cachework.redis_lock`: SET NX with a TTL of CACHEWORK_BEAT_LOCK_TTL seconds) and
renews it on every tick (at least every third of the TTL), and records each job's last run in Redis
(`cachework:beat:last-run`). A standby beat tries the lock on the same rhythm; when the
holder dies the lock expires, the standby takes it, loads the last runs (so a job sent
just before is not sent again, and one missed while nobody held the lock is sent once)
and sends from then on. A holder that cannot renew (Redis unreachable, or the lock taken
over after a long pause) stops sending at once. A beat that stops cleanly releases the
lock. Without Redis (the embedded default) there is no lock: run exactly one beat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from datetime import datetime
from pathlib import Path

import redis
from celery import beat

from cachework.redis_lock import TokenLock

log = logging.getLogger(__name__)

LOCK_KEY = "cachework:beat:lock"
LAST_RUN_KEY = "cachework:beat:last-run"


class BeatLock(TokenLock):
    """The one-beat lock: `hold()` renews it or takes it when free. Its token names the
    beat's host and pid, so the holder shows in Redis."""

    def __init__(self, client: redis.Redis, ttl: float, key: str = LOCK_KEY) -> None:
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        super().__init__(client, key, max(int(ttl * 1000), 100), token=token)


class PersistentScheduler(beat.PersistentScheduler):
    def __init__(self, *args, **kwargs) -> None:
        self._lock: BeatLock | None = None
        self._holding = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()
        runtime = getattr(self.app, "runtime", None)
        client = runtime.redis if runtime is not None else None
        if client is None:
            log.info("beat: no Redis configured, so no beat lock: run exactly one beat")
            return
        self._lock = BeatLock(client, runtime.settings.beat_lock_ttl)
        log.info(
            "beat: only the holder of Redis lock %s sends the schedule (TTL %.0fs, token %s)",
            LOCK_KEY,
            runtime.settings.beat_lock_ttl,
            self._lock.token,
        )

    @property
    def _renew_every(self) -> float:
        assert self._lock is not None
        return self._lock.ttl_ms / 3000

    def tick(self, *args, **kwargs) -> float:
        if self._lock is None:
            return super().tick(*args, **kwargs)
        try:
            held = self._lock.hold()
        except redis.RedisError as exc:
            if self._holding:
                log.warning("beat: cannot renew the beat lock (%s): not sending", exc)
            held = False
        if not held:
            if self._holding:
                log.warning("beat: lost the beat lock: standing by")
            self._holding = False
            return self._renew_every
        if not self._holding:
            self._holding = True
            self._load_last_runs()
            log.info("beat: took the beat lock: this beat sends the schedule")
        return min(super().tick(*args, **kwargs), self._renew_every)

    def reserve(self, entry):
        new_entry = super().reserve(entry)
        if self._lock is not None:
            try:
                self._lock.client.hset(
                    LAST_RUN_KEY, new_entry.name, new_entry.last_run_at.isoformat()
                )
            except redis.RedisError as exc:  # the lock check just before decides sending
                log.warning("beat: cannot record the last run of %s: %s", new_entry.name, exc)
        return new_entry

    def _load_last_runs(self) -> None:
        """The holder's last runs, so the schedule goes on where it left it."""
        assert self._lock is not None
        try:
            stored = self._lock.client.hgetall(LAST_RUN_KEY)
        except redis.RedisError as exc:
            log.warning("beat: cannot read the last runs: %s", exc)
            return
        for raw_name, raw_when in stored.items():
            entry = self.schedule.get(raw_name.decode())
            if entry is None:
                continue
            when = datetime.fromisoformat(raw_when.decode())
            if entry.last_run_at is None or when > entry.last_run_at:
                entry.last_run_at = when
        self._heap = None  # rebuilt from the entries on this tick

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._lock is not None and self._holding:
                with contextlib.suppress(redis.RedisError):
                    self._lock.release()
                self._holding = False
