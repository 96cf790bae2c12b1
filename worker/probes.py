"""Probes that answer as soon as the answer is known, and never later than their bound.

A Kubernetes probe gives up after `timeoutSeconds` (1 s by default), and a service that
hangs (a frozen Redis accepts connections and never answers) must not make a probe wait
out every check in turn. `Checks` runs named checks in parallel threads and answers when
all have answered or its timeout has passed, whichever comes first; a check still running
then is named as the problem. A check that hangs keeps its one thread: it is not started
again until it ends, so a probe every few seconds against a frozen service does not pile
up threads (the next answer says how long it has been waiting).

Liveness and readiness are different questions (README "Kubernetes"): liveness is "this
process should be restarted", so it depends on the process alone (its HTTP server
answers, its worker's main process runs), never on a service that every pod shares: an
outage of Redis or PostgreSQL would restart every pod at once and fix nothing. Readiness
is "send this process work": the services, and the process's own use of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cachework.errors import first_line

# `/live` and `/ready` of a node's exporter and of `start_http_server` (worker/metrics.py).
LIVE_PATH = "/live"
READY_PATH = "/ready"
METRICS_PATH = "/metrics"
# Seconds an HTTP `/ready` waits for its checks: under the kubelet's default 1 s probe
# timeout, and long enough for a fresh connection to each service on a busy host.
READY_TIMEOUT = 0.8

Check = Callable[[], "list[str] | str | None"]


class Checks:
    """Named checks run in parallel; see the module's docstring. Thread-safe: one instance
    serves every request of an HTTP server."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._running: dict[str, tuple[threading.Thread, float]] = {}

    def run(self, checks: dict[str, Check]) -> list[str]:
        """The problems of `checks` (name -> check returning problems: a list, a line or
        None), in the order given; a check not done within the timeout is one line."""
        deadline = time.monotonic() + self.timeout
        results: dict[str, list[str]] = {}  # this run's answers (a late thread's are dropped)
        threads: list[threading.Thread] = []
        for name, check in checks.items():
            with self._lock:
                running = self._running.get(name)
                if running is not None and running[0].is_alive():
                    waited = time.monotonic() - running[1]
                    results[name] = [f"{name}: no answer to a check started {waited:.1f}s ago"]
                    continue
                thread = threading.Thread(
                    target=self._one,
                    args=(name, check, results),
                    name=f"cachework-check-{name}",
                    daemon=True,
                )
                self._running[name] = (thread, time.monotonic())
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            done = dict(results)
        problems: list[str] = []
        for name in checks:
            problems += done.get(name, [f"{name}: no answer within {self.timeout:g}s"])
        return problems

    def _one(self, name: str, check: Check, results: dict[str, list[str]]) -> None:
        try:
            found = check()
        except Exception as exc:  # a check's bug or a client's error: the probe answers
            found = [f"{name}: {first_line(exc)}"]
        lines = [found] if isinstance(found, str) else list(found or [])
        with self._lock:
            results[name] = lines


def run_checks(checks: dict[str, Check], timeout: float) -> list[str]:
    """`Checks(timeout).run(checks)`, for a one-shot probe (a command)."""
    return Checks(timeout).run(checks)
