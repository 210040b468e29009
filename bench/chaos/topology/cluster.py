"""Three primaries with the slots split between them, and optionally one replica each."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Final

import redis

from bench.chaos.topology.node import REPLICATION, Node, Servers, wait_for
from sidecar.storage.embedded import free_port

if TYPE_CHECKING:
    from pathlib import Path

SLOTS: Final = 16384


class ClusterNode(Node):
    """A cluster-enabled node; its bus port is chosen, not derived as port + 10000 (maybe taken)."""

    def __init__(self, data_dir: Path, *, node_timeout_ms: int) -> None:
        self.bus_port = free_port()
        super().__init__(
            data_dir,
            extra_args=(
                *REPLICATION,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(self.bus_port),
                "--cluster-node-timeout",
                str(node_timeout_ms),
            ),
        )


class ValkeyCluster(Servers):
    """Three primaries, each with a third of the slots and ``replicas`` (0 or 1) replicas each.

    A node keeps its ``nodes.conf`` in its own directory, so a killed node
    restarted there rejoins the cluster as the node it was.
    """

    def __init__(self, base: Path, *, replicas: int = 0, node_timeout_ms: int = 5000) -> None:
        self._stack = ExitStack()
        self.nodes = [
            ClusterNode(base / f"node{i}", node_timeout_ms=node_timeout_ms)
            for i in range(3 * (1 + replicas))
        ]

    def start(self) -> None:
        with ExitStack() as stack:
            for node in self.nodes:
                stack.enter_context(node)
            third = SLOTS // 3
            bounds = [(0, third - 1), (third, 2 * third - 1), (2 * third, SLOTS - 1)]
            for port, (low, high) in zip(self.ports, bounds, strict=False):
                with redis.Redis(port=port) as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            with redis.Redis(port=self.ports[0]) as client:
                for node in self.nodes[1:]:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
            wait_for("every node to know every other", self._all_met, timeout=60)
            for primary, replica in zip(self.nodes, self.nodes[3:], strict=False):
                with redis.Redis(port=replica.port) as client:
                    client.execute_command("CLUSTER", "REPLICATE", self.node_id(primary.port))
            wait_for("cluster_state:ok on every node", self.agreed, timeout=60)
            self._stack = stack.pop_all()

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def live_ports(self) -> list[int]:
        return [node.port for node in self.nodes if node.running and not node.frozen]

    def flush(self) -> None:
        for port in self.ports:
            with redis.Redis(port=port) as client:
                if client.execute_command("ROLE")[0] != b"master":
                    continue
                client.flushall()
                # Tests may flush the script caches; start each with them empty
                # too, so no test depends on another having loaded a script.
                client.script_flush()

    def port_of_slot(self, slot: int) -> int:
        """The port of the node that serves ``slot``, as a live node reports it now."""
        with redis.Redis(port=self.live_ports()[0]) as client:
            for low, high, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    return int(primary[1])
        raise LookupError(slot)

    def replica_ports_of_slot(self, slot: int) -> list[int]:
        with redis.Redis(port=self.live_ports()[0]) as client:
            for low, high, _primary, *replicas in client.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    return [int(replica[1]) for replica in replicas]
        raise LookupError(slot)

    def slot_of(self, key: str) -> int:
        with redis.Redis(port=self.live_ports()[0]) as client:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))

    def node_id(self, port: int) -> str:
        with redis.Redis(port=port) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def move_slot(self, slot: int, to_port: int) -> None:
        """Migrate ``slot`` and its keys to the node on ``to_port``, as resharding does."""
        from_port = self.port_of_slot(slot)
        source, target = self.node_id(from_port), self.node_id(to_port)
        with redis.Redis(port=from_port) as src, redis.Redis(port=to_port) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        for port in self.ports:
            with redis.Redis(port=port) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)
        wait_for(f"every node to serve slot {slot} from {to_port}", self.agreed)

    def _all_met(self) -> bool:
        for port in self.ports:
            with redis.Redis(port=port) as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
            if f"cluster_known_nodes:{len(self.nodes)}" not in info:
                return False
        return True

    def agreed(self) -> bool:
        """Every live node says the cluster is ok and reports the same slot layout."""
        layouts = set()
        for port in self.live_ports():
            try:
                with redis.Redis(port=port, socket_timeout=5) as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    slots = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                return False
            if "cluster_state:ok" not in info:
                return False
            layouts.add(tuple(sorted((low, high, int(node[1])) for low, high, node, *_ in slots)))
        return len(layouts) == 1
