"""The unit tier's own guard (tests/unit/conftest.py): a test here that reaches for
PostgreSQL, Redis, RabbitMQ, a server or a worker fails at once with a clear message,
while a refused connection to a free loopback port stays the logic under test."""

from __future__ import annotations

import socket
import subprocess
import sys

import psycopg
import pytest
import redis
import sqlalchemy as sa

from tests.invalidation_helpers import free_port
from tests.unit.conftest import ServiceUsedInUnitTest, server_program, service_address


def test_redis_on_its_port_is_refused_with_the_address():
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        with pytest.raises(ServiceUsedInUnitTest, match=r"127\.0\.0\.1:6379.*make test"):
            client.ping()
    finally:
        client.close()


def test_postgresql_through_sqlalchemy_and_libpq_is_refused():
    engine = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test", poolclass=sa.pool.NullPool
    )
    with pytest.raises(ServiceUsedInUnitTest, match="5432"):
        engine.connect()
    with pytest.raises(ServiceUsedInUnitTest, match="Unix socket"):
        psycopg.connect("dbname=test")


def test_amqp_on_its_port_is_refused():
    with socket.socket() as sock, pytest.raises(ServiceUsedInUnitTest, match="5672"):
        sock.connect_ex(("127.0.0.1", 5672))


def test_a_refused_free_loopback_port_is_the_logic_under_test():
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=2)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        (("127.0.0.1", 5432), True),
        (("::1", 6379, 0, 0), True),
        (("localhost", 26379), True),
        (("10.1.2.3", 8080), True),  # not the loopback: never a unit test's
        (("127.0.0.1", 8080), False),
        ("/tmp/some.sock", False),
    ],
)
def test_service_addresses(address, refused):
    assert (service_address(address) is not None) is refused


def test_servers_and_workers_are_not_started():
    with pytest.raises(ServiceUsedInUnitTest, match="redis-server"):
        subprocess.run(["redis-server", "--port", "0"], check=False)
    assert server_program([sys.executable, "-m", "celery", "-A", "cachework.worker", "worker"])
    assert server_program("/usr/sbin/pgbouncer -d x.ini")
    assert (
        server_program([sys.executable, "-m", "celery", "-A", "cachework.worker", "inspect"])
        is None
    )
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
