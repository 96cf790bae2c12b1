"""The unit tier (`make check`): pure logic, no PostgreSQL, Redis, RabbitMQ or worker.

Only honest in-process stand-ins are used here (as dramatiq's StubBroker is): SQLite in
memory or in a temporary file, the embedded default runtime (SQLite and a database log,
no Redis), kombu's memory and filesystem transports. So that the tier passes with no
service running and stays under a minute, a test here that reaches for a service fails
at once, naming what it reached for and where it belongs (tests/, the integration tier):
- the service fixtures of tests/conftest.py (pg_url, redis_url, amqp_url, workers ...);
- a TCP connection to a service port (PostgreSQL, PgBouncer, Redis, Sentinel, RabbitMQ)
  or to any host other than the loopback (a refused connection to a free loopback port,
  or a test's own in-process server, is fine: that is the logic under test);
- starting a server program or a Celery worker process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

HOME = "tests/ (the integration tier, `make test`)"

# PostgreSQL, PgBouncer, Redis (plain, TLS), Sentinel, RabbitMQ (AMQP, AMQPS, management).
SERVICE_PORTS = {5432, 6432, 6379, 6380, 26379, 5672, 5671, 15672}
for _name, _scheme in (
    ("CACHEWORK_TEST_PG_ADMIN", ""),
    ("CACHEWORK_TEST_REDIS", ""),
    ("CACHEWORK_TEST_AMQP", "amqp://"),
):
    if os.environ.get(_name):
        _port = urlsplit(_scheme + os.environ[_name]).port
        if _port:
            SERVICE_PORTS.add(_port)

SERVER_PROGRAMS = {
    "redis-server",
    "redis-sentinel",
    "postgres",
    "pg_ctl",
    "initdb",
    "pgbouncer",
    "rabbitmq-server",
    "rabbitmqctl",
}


class ServiceUsedInUnitTest(AssertionError):
    """A unit test reached for a real service: it belongs in the integration tier."""


def service_address(address: object) -> str | None:
    """What is wrong with connecting to `address` from a unit test, or None if nothing."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None  # a Unix socket path or an abstract address
    host, port = address[0], address[1]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        return f"connected to {host}:{port} (not the loopback)"
    if port in SERVICE_PORTS:
        return f"connected to {host}:{port} (a PostgreSQL/Redis/RabbitMQ port)"
    return None


def database_address(conninfo: str = "", **kwargs: object) -> str | None:
    """What is wrong with a libpq connection (its own sockets, not Python's) to `conninfo`."""
    params = conninfo_to_dict(conninfo, **kwargs)
    host = str(params.get("host") or os.environ.get("PGHOST") or "/var/run/postgresql")
    port = int(str(params.get("port") or os.environ.get("PGPORT") or 5432).split(",")[0])
    if host.startswith("/"):
        return f"connected to PostgreSQL on the Unix socket in {host}"
    return service_address((host.split(",")[0], port))


def server_program(args: object) -> str | None:
    """Which server or worker `args` would start, or None."""
    argv = [str(args)] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    words = [str(a) for a in argv]
    if not words:
        return None
    program = Path(words[0].split()[0]).name
    if program in SERVER_PROGRAMS:
        return f"started the server program {program}"
    if "celery" in words:  # `celery [-A APP] worker ...` (the app may be named worker)
        after = words[words.index("celery") + 1 :]
        if any(w == "worker" and p not in ("-A", "--app") for p, w in pairwise(after)):
            return "started a Celery worker process"
    return None


def refuse(what: str) -> None:
    raise ServiceUsedInUnitTest(
        f"unit tests (tests/unit, `make check`) use no services, but this one {what}."
        f" Use SQLite or the embedded default, or move the test to {HOME}."
    )


def _guarded_socket(connect):
    """`connect` (socket.connect or connect_ex) refusing a service address."""

    def guarded(sock: socket.socket, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and (why := service_address(address)):
            sock.close()  # the caller never gets it back: no ResourceWarning
            refuse(why)
        return connect(sock, address)

    return guarded


@pytest.fixture(autouse=True)
def no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections to service ports (Python's sockets and libpq's own) and starts of
    servers or workers fail loudly."""
    popen_init = subprocess.Popen.__init__
    pg_connect = psycopg.Connection.connect

    def guarded_popen(self, args, *more, **kwargs):
        if why := server_program(args):
            refuse(why)
        popen_init(self, args, *more, **kwargs)

    def guarded_pg_connect(conninfo: str = "", **kwargs):
        if why := database_address(conninfo, **kwargs):
            refuse(why)
        return pg_connect(conninfo, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", _guarded_socket(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_socket(socket.socket.connect_ex))
    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    monkeypatch.setattr(psycopg, "connect", guarded_pg_connect)
    monkeypatch.setattr(psycopg.Connection, "connect", staticmethod(guarded_pg_connect))


def _no_service_fixture(name: str):
    def fixture() -> None:
        refuse(f"used the `{name}` fixture")

    fixture.__name__ = name
    fixture.__doc__ = f"Not in the unit tier: `{name}` is a real service ({HOME})."
    return fixture


# The service fixtures of tests/conftest.py, refused here (pg_url, pg_database, redis_url,
# any_db_url's PostgreSQL half and `database` depend on these and fail with them).
pg_server_url = pytest.fixture(scope="session")(_no_service_fixture("pg_server_url"))
redis_server_url = pytest.fixture(scope="session")(_no_service_fixture("redis_server_url"))
amqp_url = pytest.fixture(scope="session")(_no_service_fixture("amqp_url"))
worker_process = pytest.fixture(_no_service_fixture("worker_process"))
inprocess_worker = pytest.fixture(_no_service_fixture("inprocess_worker"))
