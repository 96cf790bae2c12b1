"""A real uvicorn process serving an ASGI app of the checkout, for tests that must see the
app as deployed: its own process, its lifespan, its event loop, real HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.invalidation_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


class Uvicorn:
    """`python -m uvicorn <app>` on a free loopback port, its output in files of `folder`
    (no pipe to fill up and stall the server)."""

    def __init__(self, app: str, env: dict[str, str], folder: Path) -> None:
        self.app, self.env, self.folder = app, env, folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, ready: str = "/ping", timeout: float = 30.0) -> Uvicorn:
        """Start it and wait (bounded) until `ready` answers 200: the lifespan has run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "stdout", "w") as out, open(self.folder / "stderr", "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1",
                 "--port", str(self.port), "--no-access-log"],
                env=self.env, cwd=ROOT, stdout=out, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.app} exited at start:\n{self.stderr()[-3000:]}")
                try:
                    if client.get(ready).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.app} not ready in {timeout}s:\n{self.stderr()}")
                time.sleep(0.1)

    def stderr(self) -> str:
        return (self.folder / "stderr").read_text()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (uvicorn's graceful shutdown, lifespan's exit included), then wait;
        killed if it does not end in `timeout` seconds. Returns the exit status."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def stopped_cleanly(self) -> bool:
        """Terminate it; whether it ended as a graceful shutdown does. uvicorn re-raises
        the signal it caught once it has shut down, so the status is -SIGTERM (or 0); what
        shows the lifespan's exit returned is its "Application shutdown complete." line,
        with no error logged after "Shutting down"."""
        code = self.terminate()
        shutdown = self.stderr().partition("Shutting down")[2]
        return (
            code in (0, -signal.SIGTERM)
            and "Application shutdown complete." in shutdown
            and "ERROR" not in shutdown
            and "Traceback" not in shutdown
        )
