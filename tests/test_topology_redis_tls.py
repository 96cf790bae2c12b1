"""Redis over TLS with an ACL user (make topology): a private redis-server listening only
on a TLS port (certificate from a CA made here with openssl), the default user off and a
user `app` with a password; the broker, the result backend and CACHEWORK_REDIS_URL are all
`rediss://app:...@` URLs verifying the server's certificate. A real worker answers a
lookup, and a rename published on the stream reaches the next lookups."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from cachework.cache.invalidation import RedisLog, publish
from cachework.redis_client import client_from_url
from cachework.settings import load_settings
from tests.conftest import MODELS, empty_schema, make_env, started
from tests.invalidation_helpers import free_port, wait_until

pytestmark = pytest.mark.topology

PASSWORD = "s3cret-tls"


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=cachework test CA")  # fmt: skip
    _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    _openssl(folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2",
             "-extfile", "san.cnf")  # fmt: skip
    return {name: folder / f"{name}" for name in ("ca.crt", "server.crt", "server.key")}


class TlsRedis:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.certs: dict[str, Path] = {}

    def url(self, db: int) -> str:
        ca = self.certs["ca.crt"]
        return (
            f"rediss://app:{PASSWORD}@127.0.0.1:{self.port}/{db}"
            f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        )

    def start(self) -> TlsRedis:
        if shutil.which("openssl") is None or shutil.which("redis-server") is None:
            raise FileNotFoundError("openssl or redis-server is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.certs = _certificates(self.folder)
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", "0", "--tls-port", str(self.port),
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder),
                "--tls-cert-file", str(self.certs["server.crt"]),
                "--tls-key-file", str(self.certs["server.key"]),
                "--tls-ca-cert-file", str(self.certs["ca.crt"]),
                "--tls-auth-clients", "no",
                "--user", "default", "off",
                "--user", "app", "on", f">{PASSWORD}", "~*", "&*", "+@all",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, timeout=15, every=0.1)
        return self

    def _answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("redis-server with TLS exited (a build without TLS?)")
        client = client_from_url(self.url(0), socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> Iterator[TlsRedis]:
    service = "Redis with TLS (redis-server --tls-port, openssl)"
    with started(TlsRedis(tmp_path_factory.mktemp("redis-tls")), service) as server:
        yield server


def test_plain_connections_and_the_default_user_are_refused(tls_redis):
    """The setup is what it claims: no TLS, or no user, gets nowhere."""
    plain = redis.Redis(host="127.0.0.1", port=tls_redis.port, socket_timeout=2)
    anonymous = client_from_url(tls_redis.url(0).replace(f"app:{PASSWORD}@", ""))
    try:
        with pytest.raises(redis.RedisError):
            plain.ping()
        with pytest.raises(redis.RedisError):
            anonymous.ping()
    finally:
        plain.close()
        anonymous.close()


def test_a_worker_on_tls_with_an_acl_user_serves_and_invalidates(
    tls_redis, pg_server_url, worker_process, tmp_path
):
    from cachework.worker.schema import create_tables
    from demo.seed import seed

    empty_schema(pg_server_url)
    engine = sa.create_engine(pg_server_url, poolclass=sa.pool.NullPool)
    create_tables(engine, MODELS)
    with sa.orm.Session(engine) as session, session.begin():
        seed(session, projects=1, products=5)
    env = make_env(
        tmp_path,
        database_url=pg_server_url,
        broker_url=tls_redis.url(1),
        result_backend=tls_redis.url(2),
        redis_url=tls_redis.url(0),
    )
    settings = load_settings(env)
    log = RedisLog(client_from_url(settings.redis_url, socket_timeout=5))
    try:
        _node, app = worker_process(env, concurrency=1)

        def lookup() -> dict:
            sent = app.send_task("cachework.lookup", kwargs={"table": "categories", "key": 1})
            return sent.get(timeout=60, interval=0.05)

        assert lookup()["id"] == 1
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE categories SET name = 'over-tls' WHERE id = 1"))
        publish("categories", [1], log=log)
        assert [lookup()["name"] for _ in range(4)] == ["over-tls"] * 4
        # The invalidation went through the TLS server's stream, as user `app`.
        assert log.client.acl_whoami() in (b"app", "app")
        assert log.state().head != "0"
    finally:
        log.client.close()
        engine.dispose()
