"""A PgBouncer of the test's own: transaction pooling on a free loopback port, in front of
one database of the run's PostgreSQL, with so few server connections that clients really
share them (what breaks session state: prepared statements, session-level locks).

Run as the `postgres` user when the suite runs as root (pgbouncer refuses root), with its
config and log in a folder that user can read and write; no unix socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from tests.invalidation_helpers import free_port

BINARY = os.environ.get("CACHEWORK_TEST_PGBOUNCER", "/usr/sbin/pgbouncer")


def binary() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    return BINARY if Path(BINARY).is_file() else shutil.which("pgbouncer")


class OwnPgBouncer:
    """pgbouncer in `pool_mode` in front of the database of `server_url` (a SQLAlchemy URL
    of a trust-auth PostgreSQL); `url` is the same database through the bouncer."""

    def __init__(self, server_url: str, pool_mode: str = "transaction", pool_size: int = 3) -> None:
        self.server = sa.engine.make_url(server_url)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="cachework-pgbouncer-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.server.set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False
        )

    @property
    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config(self) -> str:
        s = self.server
        target = (
            f"host={s.host or '127.0.0.1'} port={s.port or 5432} dbname={s.database} "
            f"user={s.username or 'postgres'}"
        )
        return "\n".join(
            [
                "[databases]",
                f"{s.database} = {target}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = any",
                f"pool_mode = {self.pool_mode}",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                "max_client_conn = 200",
                "server_round_robin = 0",
                "query_wait_timeout = 30",
                "ignore_startup_parameters = extra_float_digits,options",
                f"logfile = {self.folder / 'pgbouncer.log'}",
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> OwnPgBouncer:
        exe = binary()
        if exe is None:
            raise FileNotFoundError(f"no pgbouncer at {BINARY} or on PATH")
        config = self.folder / "pgbouncer.ini"
        config.write_text(self._config())
        args = [exe, str(config)]
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(config, "postgres", "postgres")
            args = [exe, "-u", "postgres", str(config)]
        with open(self.folder / "stderr.log", "wb") as stderr:  # never a pipe left unread
            self.proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = (self.folder / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"pgbouncer exited at start: {err.strip()} {self.log[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"pgbouncer not listening within {timeout}s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: immediate shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
