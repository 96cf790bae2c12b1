"""The metrics exporter of a worker node: `python -m cachework.worker.exporter FOLDER PARENT NODE`.

Started by the node's main process (`start_exporter`, from `worker/lifecycle.py`) when
CACHEWORK_METRICS_PORT is set, so that process (which forks the pool) runs no server
thread. It serves on CACHEWORK_METRICS_BIND:CACHEWORK_METRICS_PORT

- `/metrics`: the sum over the node's processes of what they wrote to FOLDER;
- `/live`: the node's main process runs (and this server answers). Nothing else: a
  liveness probe that failed when Redis or PostgreSQL did would restart every pod of an
  outage at once (README "Kubernetes");
- `/ready`: the database, Redis (and that it may not evict cachework's keys: its policy
  can change at run time) and the broker answer, the node answers ping and none of its
  children's invalidation listeners has been cut off longer than
  CACHEWORK_LISTENER_STALE_AFTER. The checks run in parallel and the answer comes within
  `cachework.worker.probes.READY_TIMEOUT` (0.8 s), a check still hanging (a frozen Redis) named.

It prints one line, `listening on ...` or why it cannot, and ends when its parent does.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from cachework.errors import CacheworkError, ConfigError
from cachework.settings import Settings, load_settings
from cachework.worker import health, metrics
from cachework.worker.checks import broker_problem
from cachework.worker.probes import READY_TIMEOUT, Checks

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)
START_TIMEOUT = 20.0  # seconds for the exporter to say it listens


class NodeProbes:
    """What the exporter answers for node `node`, whose main process is `parent` and
    whose processes write their values to `folder`."""

    def __init__(self, settings: Settings, folder: str, parent: int, node: str) -> None:
        self.settings, self.folder, self.parent, self.node = settings, folder, parent, node
        self.checks = Checks(READY_TIMEOUT)
        self.app: Celery | None = None  # made on the first ping

    def live(self) -> list[str]:
        return health.node_live(self.parent, self.node)

    def ready(self) -> list[str]:
        s = self.settings
        named = health.readiness_checks(
            s, READY_TIMEOUT, {"listeners": self.listeners}, broker=self.broker
        )
        return self.live() + self.checks.run(named)

    def render(self) -> bytes:
        return metrics.exposition(metrics.multiprocess_registry(self.folder))

    def broker(self) -> list[str]:
        down = broker_problem(self.settings, READY_TIMEOUT)
        return [down] if down else self.ping()

    def ping(self) -> list[str]:
        if self.app is None:
            self.app = health.control_app(self.settings)
        # Back as soon as the node answers (kombu already limits a broadcast to one
        # destination to one reply; said here, since the bound matters).
        node, wait = self.node, READY_TIMEOUT
        replies = self.app.control.ping(destination=[node], timeout=wait, limit=1) or []
        if any(node in reply for reply in replies):
            return []
        return [f"worker {node} did not answer ping within {wait:g}s"]

    def listeners(self) -> list[str]:
        states = health.listeners(self.folder)
        stale_after = self.settings.listener_stale_after
        problems = health.listener_problems(states, stale_after)
        return [f"worker {self.node} {line}" for line in problems]

    def close(self) -> None:
        if self.app is not None:
            self.app.close()


def main(argv: list[str]) -> int:
    folder, parent, node = argv[0], int(argv[1]), argv[2]
    try:
        settings = load_settings()
    except CacheworkError as exc:
        print(f"metrics exporter: {exc}", flush=True)
        return 2
    probes = NodeProbes(settings, folder, parent, node)
    port, bind = settings.metrics_port or 0, settings.metrics_bind
    try:
        server = metrics.MetricsServer(port, bind, probes.render, probes.ready, probes.live)
        server.start()
    except OSError as exc:
        print(
            f"CACHEWORK_METRICS_PORT={port}: cannot listen on {bind}:{port}: {exc.strerror or exc}",
            flush=True,
        )
        return 2
    print(f"listening on http://{bind}:{server.port}/metrics", flush=True)
    try:
        while health.alive(parent) and os.getppid() == parent:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        probes.close()
    return 0


def start_exporter(folder: str, node: str) -> subprocess.Popen:
    """In a node's main process: start its exporter; ConfigError (one line) if it cannot
    listen (stopped first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachework.worker.exporter", folder, str(os.getpid()), node],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    line = b""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            break
    text = line.decode(errors="replace").strip()
    if not text.startswith("listening"):
        stop_exporter(proc)
        raise ConfigError(text or "the metrics exporter did not start")
    proc.stdout.close()
    log.info("metrics exporter %s", text)
    return proc


def stop_exporter(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
