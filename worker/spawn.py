"""Start and stop a real `celery -A cachework.worker worker` subprocess (demo, tests, benchmarks).

The child gets its own environment, so one caller can run workers against several brokers.
`stop()` asks for a warm shutdown, waits, then kills the whole process group, and always
reaps it: no stray workers outlive the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from celery import Celery

from cachework.settings import load_settings
from cachework.worker import routing


def stop_process_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the main process (a Celery worker's warm shutdown: it stops its own pool),
    wait, then SIGKILL the process group started with `start_new_session`; always reaped,
    and no child of a dead main process is left behind.

    Only the main process gets the SIGTERM: a prefork pool whose children die of it
    under their parent's feet leaves the parent waiting for them until it is killed."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class WorkerProcess:
    """One worker node running in a subprocess (prefork unless `pool` says otherwise)."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        concurrency: int = 2,
        name: str | None = None,
        queues: tuple[str, ...] | None = None,
        logfile: Path | None = None,
        extra_args: tuple[str, ...] = (),
        pool: str = "prefork",
        cwd: Path | None = None,
    ) -> None:
        self.env = env
        self.cwd = cwd  # an app's folder, say (default: this process's)
        self.pool = pool
        self.concurrency = concurrency
        self.name = name or f"w{uuid.uuid4().hex[:8]}@127.0.0.1"
        # Default: what a cachework worker consumes for this environment (its own queues,
        # plus Celery's default queue unless CACHEWORK_SHARED_BROKER is on).
        self.queues = queues or routing.queues(load_settings(env).shared_broker)
        self.logfile = logfile
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> WorkerProcess:
        cmd = [
            sys.executable, "-m", "celery", "-A", "cachework.worker", "worker",
            "-P", self.pool, "-c", str(self.concurrency), "-n", self.name,
            "-Q", ",".join(self.queues), "--without-gossip", "--without-mingle",
            "-l", "INFO", *self.extra_args,
        ]  # fmt: skip
        if self.logfile is not None:
            self.logfile.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> None:
        """Block until the node answers a ping; RuntimeError if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early ({self._tail()})")
            replies = app.control.ping(destination=[self.name], timeout=0.5) or []
            if any(self.name in reply for reply in replies):
                return
        raise RuntimeError(f"worker {self.name} did not answer ping in {timeout}s ({self._tail()})")

    def stop(self, timeout: float = 20.0) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL of the process group; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            stop_process_group(proc, timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return proc.returncode

    def _tail(self, lines: int = 20) -> str:
        if self.logfile is None or not self.logfile.exists():
            return "no log"
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
