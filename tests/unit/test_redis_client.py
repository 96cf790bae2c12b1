"""Redis URLs, Sentinel settings and the one client factory (no server needed): what each
URL form becomes, a bad value as a ConfigError naming it, secrets masked, ReadOnlyError
transient, a Cluster node's INFO read as a refusal. Servers: tests/test_topology_*.py."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

import celeryconfig
from cachework.errors import ConfigError, is_transient, transient_errors
from cachework.redis_client import (
    FailoverAwareConnection,
    FailoverAwareSSLConnection,
    SentinelRedis,
    client_from_url,
    follow_master,
    parse_sentinel_url,
    server_identity,
)
from cachework.redis_policy import cluster_problem, servers
from cachework.settings import load_settings, mask_url

SENTINELS = "sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3/2"


def _settings(**values: str):
    return load_settings({f"CACHEWORK_{k.upper()}": v for k, v in values.items()})


def test_a_sentinel_redis_url_gets_the_master_name_and_sentinel_credentials():
    s = _settings(
        redis_url=SENTINELS,
        redis_master_name="mymaster",
        redis_sentinel_password="s3cret&x",
        redis_sentinel_username="watcher",
    )
    target = parse_sentinel_url(s.redis_url)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert target.master_name == "mymaster" and target.db == 2
    assert (target.username, target.password) == (None, "pw")
    assert (target.sentinel_username, target.sentinel_password) == ("watcher", "s3cret&x")
    shown = mask_url(s.redis_url)
    assert "s3cret" not in shown and ":pw@" not in shown, shown


def test_master_name_in_the_url_wins_over_the_setting():
    s = _settings(redis_url=SENTINELS + "?master_name=own", redis_master_name="other")
    assert parse_sentinel_url(s.redis_url).master_name == "own"
    # Without the setting, the URL's own name is enough.
    assert parse_sentinel_url(_settings(redis_url=SENTINELS + "?master_name=x").redis_url)


def test_a_sentinel_broker_gets_kombus_and_celerys_transport_options():
    s = _settings(
        broker_url=SENTINELS,
        result_backend=SENTINELS,
        redis_master_name="mymaster",
        redis_sentinel_password="sp",
    )
    conf = celeryconfig.build(s)
    options = conf["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "sp"
    assert options["visibility_timeout"] == 600  # ours are kept beside them
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"
    assert conf["broker_url"] == SENTINELS  # kombu reads the URL as written
    assert conf["broker_transport"] == "cachework.worker.redis_transport:SentinelTransport"
    # Cachework's own Redis defaults to the broker's group, with its master name.
    assert parse_sentinel_url(s.redis_url).master_name == "mymaster"
    assert parse_sentinel_url(s.broker_redis_url).master_name == "mymaster"


def test_plain_redis_brokers_use_the_failover_aware_transport():
    conf = celeryconfig.build(_settings(broker_url="redis://127.0.0.1:1/0"))
    assert conf["broker_transport"] == "cachework.worker.redis_transport:Transport"
    assert "master_name" not in conf["broker_transport_options"]
    assert conf["result_backend_transport_options"] == {}


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"redis_url": SENTINELS}, ["CACHEWORK_REDIS_URL=", "CACHEWORK_REDIS_MASTER_NAME"]),
        ({"broker_url": SENTINELS}, ["CACHEWORK_BROKER_URL=", "CACHEWORK_REDIS_MASTER_NAME"]),
        (
            {"result_backend": SENTINELS, "redis_url": "off"},
            ["CACHEWORK_RESULT_BACKEND=", "CACHEWORK_REDIS_MASTER_NAME"],
        ),
        # kombu reads the master's name only from its options, never from the URL.
        ({"broker_url": SENTINELS + "?master_name=m"}, ["CACHEWORK_BROKER_URL="]),
        (
            {"redis_url": "sentinel://h1:26379;redis://h2:6379", "redis_master_name": "m"},
            ["CACHEWORK_REDIS_URL=", "sentinel://host:port"],
        ),
        (
            {"redis_url": "sentinel://h1:port", "redis_master_name": "m"},
            ["CACHEWORK_REDIS_URL="],
        ),
        ({"redis_master_name": "bad name!"}, ["CACHEWORK_REDIS_MASTER_NAME='bad name!'"]),
        ({"redis_url": "memcached://h"}, ["CACHEWORK_REDIS_URL=", "sentinel://"]),
    ],
)
def test_bad_sentinel_settings_name_the_variable(values, words):
    with pytest.raises(ConfigError) as refused:
        _settings(**{"redis_url": "redis://h/0", **values})
    for word in words:
        assert word in str(refused.value), str(refused.value)
    assert ":pw@" not in str(refused.value)


def test_client_from_url_makes_a_sentinel_master_client_without_connecting():
    url = _settings(redis_url=SENTINELS, redis_master_name="m").redis_url
    client = client_from_url(url, socket_timeout=2, socket_connect_timeout=1)
    try:
        assert isinstance(client, SentinelRedis)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "m"
        assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"
        assert pool.connection_kwargs["socket_timeout"] == 2
        assert [s.connection_pool.connection_kwargs["port"] for s in client.sentinel.sentinels] == [
            26379,
            26380,
            26379,
        ]
    finally:
        client.close()
    assert client.sentinel is None  # closed with its sentinels


def test_follow_master_moves_a_sentinel_client_when_the_sentinels_name_another_master(
    monkeypatch,
):
    """After SENTINEL FAILOVER the old master still answers open connections: a reader
    or writer asks the sentinels first and, when the master moved, drops its idle
    connections (the next command connects to the new master)."""
    url = _settings(redis_url=SENTINELS, redis_master_name="m").redis_url
    client = client_from_url(url, socket_timeout=2, socket_connect_timeout=1)
    answers = iter([("127.0.0.1", 7001), ("127.0.0.1", 7001), ("127.0.0.1", 7002)])
    monkeypatch.setattr(client.sentinel, "discover_master", lambda name: next(answers))
    dropped: list[bool] = []
    pool = client.connection_pool
    monkeypatch.setattr(pool, "disconnect", lambda inuse_connections=True: dropped.append(True))
    try:
        assert follow_master(client) is False  # the first answer: nothing to move from
        before = len(dropped)
        assert follow_master(client) is False and len(dropped) == before  # the same master
        assert follow_master(client) is True and len(dropped) == before + 1  # moved
        assert pool.master_address == ("127.0.0.1", 7002)
    finally:
        client.close()
    plain = redis.Redis.from_url("redis://127.0.0.1:1/0")  # never contacted
    assert follow_master(plain) is False


def test_plain_urls_get_the_failover_aware_connection():
    plain = client_from_url("redis://127.0.0.1:1/3", socket_timeout=1)
    tls = client_from_url("rediss://127.0.0.1:1/0", socket_timeout=1)
    try:
        assert plain.connection_pool.connection_class is FailoverAwareConnection
        assert tls.connection_pool.connection_class is FailoverAwareSSLConnection
        assert plain.connection_pool.connection_kwargs["db"] == 3
    finally:
        plain.close()
        tls.close()


@pytest.mark.parametrize(
    "reply",
    [
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
        redis.ResponseError(
            "UNBLOCKED force unblock from blocking operation, instance state changed "
            "(master -> replica?)"
        ),
    ],
)
def test_a_demoted_masters_reply_is_a_lost_connection_and_transient(reply):
    class Replica(FailoverAwareConnection):
        disconnected = 0

        def disconnect(self, *args, **kwargs):
            Replica.disconnected += 1

    conn = Replica()
    original = redis.Connection.read_response
    redis.Connection.read_response = lambda self, *a, **k: (_ for _ in ()).throw(reply)
    try:
        with pytest.raises(redis.ConnectionError) as raised:
            conn.read_response()
    finally:
        redis.Connection.read_response = original
    assert Replica.disconnected == 1 and is_transient(raised.value)
    if "UNBLOCKED" in str(reply):
        return
    # A READONLY or NOREPLICAS that reaches a caller by another way is transient too.
    assert is_transient(reply)
    with pytest.raises(Exception) as wrapped, transient_errors("Redis"):
        raise reply
    assert type(wrapped.value).__name__ == "TransientError"
    assert not is_transient(redis.ResponseError("WRONGTYPE Operation against a key"))


class _Info:
    def __init__(self, answer):
        self.answer = answer

    def info(self, section):
        assert section == "cluster"
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_cluster_node_is_a_problem_and_a_plain_server_is_not():
    line = cluster_problem("CACHEWORK_REDIS_URL='redis://h'", _Info({"cluster_enabled": 1}))
    assert line and "cluster_enabled:1" in line and "CACHEWORK_REDIS_URL=" in line
    assert cluster_problem("x", _Info({"cluster_enabled": 0})) is None
    assert cluster_problem("x", _Info(redis.ResponseError("NOPERM info"))) is None


def test_one_sentinel_group_is_checked_once_for_the_broker_and_our_keys():
    s = _settings(broker_url=SENTINELS.replace("/2", "/1"), redis_master_name="m")
    assert len(servers(s, broker=True)) == 1
    other = _settings(
        broker_url="sentinel://10.9.9.9:26379", redis_url=SENTINELS, redis_master_name="m"
    )
    assert len(servers(other, broker=True)) == 2
    assert server_identity("redis://h:1/0") == server_identity("redis://h:1/5")
