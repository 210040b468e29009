"""Cluster: kill the primary of the chaos secret's slot and let its replica take over.

Three primaries with one replica each and ``cluster-node-timeout`` 1000 ms.
The killed node restarts from its own ``nodes.conf`` and rejoins as the
replica of the node that replaced it, so the next round can kill that one.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Final

import redis

from bench.chaos.scenario import Scenario, blocking, recovered, start_fault
from bench.chaos.service import OWNER, SidecarProcess
from bench.chaos.topology import ValkeyCluster, data_client, wait_for
from sidecar.storage.layout import secret_key

if TYPE_CHECKING:
    from pathlib import Path

    from bench.chaos.check import Result
    from bench.chaos.client import Driver
    from bench.chaos.service import Durability

NODE_TIMEOUT_MS: Final = 1000
NAME: Final = "cluster"
# Failure detection is node-timeout plus gossip; the election waits 0.5-1 s more.
FAILOVER_TIMEOUT_S: Final = 60.0


def linked_replica(cluster: ValkeyCluster, slot: int) -> int | None:
    """The port of a live replica of ``slot``'s primary whose link is up, if any."""
    for port in cluster.replica_ports_of_slot(slot):
        if port not in cluster.live_ports():
            continue
        try:
            with data_client(port) as client:
                info: dict[str, Any] = client.info("replication")
        except redis.RedisError:
            continue
        if info.get("master_link_status") == "up":
            return port
    return None


async def kill_cluster_primary(work: Path, durability: Durability, *, rounds: int) -> Result:
    """Rounds of: rotate (200), SIGKILL the slot's primary, let its replica win, probe, rejoin."""
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(
            ValkeyCluster(work / "redis", replicas=1, node_timeout_ms=NODE_TIMEOUT_MS)
        )
        slot = cluster.slot_of(secret_key(OWNER, NAME))
        service = stack.enter_context(
            SidecarProcess(work / "sidecar", cluster.url, durability, cluster=True)
        )
        scenario = Scenario("cluster primary kill", NAME, service)

        def ready() -> bool:
            return cluster.agreed() and linked_replica(cluster, slot) is not None

        def taken_over(from_port: int) -> bool:
            return cluster.agreed() and cluster.port_of_slot(slot) != from_port

        async def rounds_of(driver: Driver) -> None:
            for _ in range(rounds):
                await blocking(wait_for, "the slot's replica to be linked", ready)
                await driver.rotate_until_acked()
                primary = cluster.node(await blocking(cluster.port_of_slot, slot))
                fault = start_fault(driver, scenario.name)
                await blocking(primary.kill)
                await blocking(
                    wait_for,
                    f"a replica to take slot {slot} over",
                    functools.partial(taken_over, primary.port),
                    FAILOVER_TIMEOUT_S,
                )
                recovered(fault)
                await driver.probe()
                await blocking(primary.start)

        return await scenario.run(rounds_of)
