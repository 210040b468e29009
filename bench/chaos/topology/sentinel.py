"""A primary, one replica and three sentinels (quorum 2) that monitor them."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Final

import redis

from bench.chaos.topology.node import (
    REPLICATION,
    Node,
    Servers,
    data_client,
    role_of,
    server_binary,
    wait_for,
)
from sidecar.storage.embedded import EmbeddedValkey

if TYPE_CHECKING:
    from pathlib import Path

MASTER_NAME: Final = "wisp-primary"


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


class SentinelGroup(Servers):
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
