"""`cachework health` fails, with one line saying why, for each thing that can be down: the
broker, the database, Redis (each a private server of the test's own, stopped), no worker,
and a worker child whose invalidation listener is cut off (a real prefork worker whose
Redis connection goes through a proxy the test closes). The shared services are never
stopped."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import MODELS, make_env
from tests.invalidation_helpers import OwnRedis, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]


def health(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `cachework health ARGS` in a process of its own: (exit status, output)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from cachework.worker.cli import main; main()", "health", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def timed_health(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    """`health`, as an exec probe runs it: (exit status, output, seconds from spawn to
    exit)."""
    started = time.perf_counter()
    status, output = health(env, *args)
    return status, output, time.perf_counter() - started


def sqlite_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = make_env(tmp_path, **values)
    Path(env["CACHEWORK_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    return env


def assert_unhealthy(result: tuple[int, str], *words: str) -> None:
    status, output = result
    assert status == 1, output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("unhealthy"), output
    for word in words:
        assert word in lines[0], output


def test_broker_down(tmp_path):
    broker = OwnRedis(tmp_path / "broker").start()
    try:
        env = sqlite_env(tmp_path, broker_url=broker.url, redis_url="off")
        assert health(env, "--liveness") == (0, "ok (liveness)")
        broker.stop()
        assert_unhealthy(health(env, "--liveness"), "broker unreachable", "CACHEWORK_BROKER_URL")
        assert_unhealthy(health(env), "broker unreachable")
    finally:
        broker.stop()


def test_redis_down(tmp_path):
    server = OwnRedis(tmp_path / "redis").start()
    try:
        env = sqlite_env(tmp_path, redis_url=server.url)
        assert health(env, "--liveness") == (0, "ok (liveness)")
        server.stop()
        assert_unhealthy(health(env, "--liveness"), "Redis unreachable", "CACHEWORK_REDIS_URL")
    finally:
        server.stop()


class OwnPostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary folder, trust auth) on a
    free loopback port."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = Path(found[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="cachework-pg-"))
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(self.folder, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        # No pipes: the server started by pg_ctl would hold them open.
        subprocess.run(
            [*self.as_user, *cmd],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> OwnPostgres:
        data = self.folder / "data"
        if not data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start"
        )
        return self

    def stop(self) -> None:
        if (self.folder / "data" / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                      "-w", "stop")  # fmt: skip

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def test_database_down(tmp_path):
    server = OwnPostgres()
    try:
        server.start()
        env = sqlite_env(tmp_path, database_url=server.url, redis_url="off")
        assert health(env, "--liveness") == (0, "ok (liveness)")
        server.stop()
        assert_unhealthy(
            health(env, "--liveness"), "database unreachable", "CACHEWORK_DATABASE_URL"
        )
    finally:
        server.remove()


def test_no_worker_answers(tmp_path):
    broker = OwnRedis(tmp_path / "broker").start()
    try:
        env = sqlite_env(tmp_path, broker_url=broker.url, redis_url=broker.url)
        assert health(env, "--liveness") == (0, "ok (liveness)")
        assert_unhealthy(
            health(env, "--readiness", "--timeout", "1"), "no cachework worker answered"
        )
    finally:
        broker.stop()


# --- a listener cut off ------------------------------------------------------------------------


class Proxy:
    """A TCP forwarder on a free loopback port to `port`; `cut()` closes it and every
    connection through it (new ones are refused)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        self.threads = [threading.Thread(target=self._accept, name="test-proxy", daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self.lock:  # never a connection left open past cut()
                if self.closed:
                    client.close()
                    return
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                except OSError:
                    client.close()
                    continue
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pipe, args=(a, b), name="test-proxy", daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            self.closed = True
            self.server.close()
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture(params=["metrics port", "no metrics port"])
def cut_off_node(request, pg_url, tmp_path, worker_process) -> Iterator[dict]:
    """A two-child worker whose listeners read the stream through a proxy the test cuts;
    with and without an exporter (readiness must not depend on one)."""
    from cachework.worker.schema import create_tables

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    create_tables(engine, MODELS)
    server = OwnRedis(tmp_path / "redis").start()
    proxy = Proxy(server.port)
    port = free_port() if request.param == "metrics port" else None
    worker_env = make_env(
        tmp_path,
        database_url=pg_url,
        broker_url=server.url,
        result_backend=server.url,
        redis_url=f"redis://127.0.0.1:{proxy.port}/0",  # the stream, through the proxy
        metrics_port=str(port) if port else "off",
        listener_stale_after="1",
    )
    try:
        worker_process(worker_env, concurrency=2)
        cli_env = dict(worker_env, CACHEWORK_REDIS_URL=server.url)
        yield {"env": cli_env, "proxy": proxy, "port": port}
    finally:
        proxy.cut()
        server.stop()
        engine.dispose()


def _ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_child_listener_cut_off_longer_than_stale_after(cut_off_node):
    env, port = cut_off_node["env"], cut_off_node["port"]
    wait_until(lambda: health(env, "--timeout", "2")[0] == 0, timeout=20, every=0.2)
    assert health(env, "--timeout", "2") == (0, "ok (readiness)")
    if port:
        assert _ready(port) == (200, "ok\n")
    cut_off_node["proxy"].cut()
    deadline = time.monotonic() + 20
    result = health(env, "--timeout", "1")
    while result[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.3)
        result = health(env, "--timeout", "1")
    assert_unhealthy(
        result, "invalidation listener cut off", "CACHEWORK_LISTENER_STALE_AFTER=1", "worker "
    )
    assert health(env, "--liveness")[0] == 0  # the services themselves are fine
    if not port:
        return
    # The node's own endpoint: its Redis (through the proxy) is gone, and both children's
    # listeners are cut off, one line each (each once its own down-time passes 1 s: the
    # second child's may still be short of it when the first one is reported).
    deadline = time.monotonic() + 10
    status, body = _ready(port)
    while body.count("invalidation listener cut off") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = _ready(port)
    assert status == 503, body
    lines = body.strip().splitlines()
    assert lines[0].startswith("Redis unreachable"), body
    assert len([line for line in lines if "invalidation listener cut off" in line]) == 2, body
