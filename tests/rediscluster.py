"""A real 3-master Redis Cluster on free ports (redis-server, ``redis-cli --cluster create``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from cryptopipe.localredis import LocalRedis, free_port
from redisstore.conn import connect


class LocalCluster:
    """``masters`` redis-server processes in cluster mode (no replicas), created and ready.

    Each node has its own data directory (AOF on, as :class:`LocalRedis` starts every
    server), and its cluster bus on a port of its own (``--cluster-port``: the default,
    port + 10000, may be taken or past 65535), all free ports, so parallel test
    workers do not clash.
    """

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.nodes: list[LocalRedis] = []
        for i in range(masters):
            node_dir = data_dir / f"node{i}"
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                "5000",
            ]
            self.nodes.append(LocalRedis(node_dir, free_port(), extra_args=args))

    @property
    def url(self) -> str:
        """The URL of the first node: what a user would put in ``REDIS_URL``."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start the nodes, create the cluster, wait until every node says ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start()
            cli = shutil.which("redis-cli")
            assert cli, "redis-cli is not installed: apt-get install redis-tools (or redis-server)"
            hosts = [f"127.0.0.1:{n.port}" for n in self.nodes]
            create = [cli, "--cluster", "create", *hosts, "--cluster-replicas", "0"]
            done = subprocess.run(
                [*create, "--cluster-yes"], capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == 0, f"redis-cli --cluster create failed: {done.stdout[-2000:]}"
            deadline = time.monotonic() + timeout
            while not all(self._ok(n) for n in self.nodes):
                assert time.monotonic() < deadline, f"cluster not ok within {timeout} s"
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _ok(node: LocalRedis) -> bool:
        client = connect(node.url, cluster=False)
        try:
            state = client.cluster("INFO")
            return bool(state.get("cluster_state") == "ok") and len(client.cluster("SLOTS")) > 0
        finally:
            client.close()

    def port_of(self, key: str) -> int:
        """The port of the node that serves ``key``'s slot."""
        client = connect(self.url, cluster=False)
        try:
            slot = int(client.cluster("KEYSLOT", key))
            for first, last, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(first) <= slot <= int(last):
                    return int(primary[1])
        finally:
            client.close()
        raise AssertionError(f"no node serves slot {slot} of {key}")

    def move_slot(self, key: str, to: LocalRedis) -> None:
        """Give ``key``'s slot (which must hold no key) to node ``to``, as a resharding would."""
        clients = [connect(n.url, cluster=False) for n in self.nodes]
        try:
            slot = int(clients[0].cluster("KEYSLOT", key))
            target = clients[self.nodes.index(to)]
            target_id = target.execute_command("CLUSTER MYID")
            for client in [target, *clients]:  # the new owner first, as redis-cli does
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        finally:
            for client in clients:
                client.close()
        deadline = time.monotonic() + 10
        while self.port_of(key) != to.port:
            assert time.monotonic() < deadline, f"slot of {key} not moved within 10 s"
            time.sleep(0.05)

    def flush(self) -> None:
        """Empty every node."""
        for node in self.nodes:
            client = redis.Redis.from_url(node.url)
            client.flushall()
            client.close()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
