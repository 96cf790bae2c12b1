"""Private Redis topologies for the topology tests: a Sentinel group (1 master, 1 replica,
3 sentinels) and a 3-master Redis Cluster, each on free loopback ports in a folder of the
test's own, every wait bounded, every process killed and reaped at the end."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
from pathlib import Path

import redis

from tests.invalidation_helpers import free_port, wait_until

MASTER_NAME = "m"


def _server(folder: Path, port: int, *args: str, conf: Path | None = None) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    head = [str(conf)] if conf is not None else []
    return subprocess.Popen(
        [
            "redis-server", *head, "--port", str(port), "--bind", "127.0.0.1",
            "--protected-mode", "no", "--save", "", "--appendonly", "no",
            "--dir", str(folder), *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=2)


def _answers(port: int) -> bool:
    client = _client(port)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


class SentinelGroup:
    """1 master, 1 replica and 3 sentinels monitoring them as `MASTER_NAME` (quorum 2,
    down after 1 s, failover timeout 3 s)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = [free_port(), free_port()]  # the first starts as the master
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinels: list[subprocess.Popen] = []

    def url(self, db: int = 0) -> str:
        """kombu's form: every sentinel, ';'-separated, the database on each."""
        return ";".join(f"sentinel://127.0.0.1:{p}/{db}" for p in self.sentinel_ports)

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        master, replica = self.ports
        self.servers[master] = _server(self.folder / str(master), master)
        self.servers[replica] = _server(
            self.folder / str(replica), replica, "--replicaof", "127.0.0.1", str(master)
        )
        for port in self.ports:
            wait_until(lambda p=port: _answers(p), timeout=timeout, every=0.05)
        for port in self.sentinel_ports:
            folder = self.folder / f"sentinel-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {folder}\n"
                "sentinel resolve-hostnames no\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 3000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # Ready: every sentinel knows the replica and the other two sentinels.
        wait_until(self._settled, timeout=timeout, every=0.1)
        return self

    def _settled(self) -> bool:
        for port in self.sentinel_ports:
            client = _client(port)
            try:
                state = client.sentinel_master(MASTER_NAME)
                if int(state.get("num-slaves", 0)) < 1:
                    return False
                if int(state.get("num-other-sentinels", 0)) < 2:
                    return False
                replicas = client.sentinel_slaves(MASTER_NAME)
                if not any(r.get("master-link-status") == "ok" for r in replicas):
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def master_port(self) -> int:
        """The master's port as the sentinels (a majority of those answering) see it."""
        seen: list[int] = []
        for port in self.sentinel_ports:
            client = _client(port)
            try:
                seen.append(int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
            except (redis.RedisError, TypeError):
                pass
            finally:
                client.close()
        return max(set(seen), key=seen.count)

    def failover(self, timeout: float = 30.0) -> int:
        """SENTINEL FAILOVER (a planned switch-over); returns the new master's port once
        it accepts writes, every sentinel names it, and the old master was demoted.

        Sentinel promotes the replica first and demotes the old master only some seconds
        later (when its INFO still says master, after 4 publish periods, about 8 s):
        meanwhile connections opened before the switch still write to the old master."""
        old = self.master_port()
        client = _client(self.sentinel_ports[0])
        try:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        finally:
            client.close()
        new = self._wait_new_master(old, timeout)
        wait_until(lambda: self.role(old) == "slave", timeout=timeout, every=0.1)
        return new

    def role(self, port: int) -> str | None:
        client = _client(port)
        try:
            role = client.role()[0]
        except redis.RedisError:
            return None
        finally:
            client.close()
        return role.decode() if isinstance(role, bytes) else str(role)

    def kill_master(self, timeout: float = 30.0) -> int:
        """SIGKILL the master process; returns the promoted replica's port once it accepts
        writes. The old master is started again (as a replica of the new one, as the
        sentinels reconfigure it), so a second failover has a replica to promote."""
        old = self.master_port()
        _kill(self.servers.pop(old))
        new = self._wait_new_master(old, timeout)
        self.servers[old] = _server(
            self.folder / str(old), old, "--replicaof", "127.0.0.1", str(new)
        )
        wait_until(lambda: _answers(old), timeout=timeout, every=0.05)
        return new

    def _wait_new_master(self, old: int, timeout: float) -> int:
        def switched() -> int | None:
            ports = set()
            for port in self.sentinel_ports:
                client = _client(port)
                try:
                    ports.add(int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
                except (redis.RedisError, TypeError):
                    return None
                finally:
                    client.close()
            if len(ports) != 1 or old in ports:
                return None
            new = ports.pop()
            return new if self.role(new) == "master" else None

        return int(wait_until(switched, timeout=timeout, every=0.1))

    def stop(self) -> None:
        for proc in self.sentinels:
            _kill(proc)
        self.sentinels = []
        for proc in self.servers.values():
            _kill(proc)
        self.servers = {}


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(tries: int = 200) -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(tries):
        port = random.randint(20000, 40000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """3 redis-server --cluster-enabled yes nodes joined as 3 masters (no replicas)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = [cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen] = []

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/{db}"

    def start(self, timeout: float = 30.0) -> RedisCluster:
        for port in self.ports:
            node = self.folder / str(port)
            self.procs.append(
                _server(
                    node, port, "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node / "nodes.conf"),
                    "--cluster-node-timeout", "2000",
                )
            )  # fmt: skip
        for port in self.ports:
            wait_until(lambda p=port: _answers(p), timeout=timeout, every=0.05)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        wait_until(self._ok, timeout=timeout, every=0.1)
        return self

    def _ok(self) -> bool:
        client = _client(self.ports[0])
        try:
            return client.cluster("info").get("cluster_state") == "ok"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        for proc in self.procs:
            _kill(proc)
        self.procs = []
