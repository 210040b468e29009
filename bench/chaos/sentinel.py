"""Sentinel scenarios: a primary killed after acknowledged rotations (with and without
a frozen, cut-off replica), coordinated failovers under load, and a replica that is down.

All of them run on one ``SentinelEnv``: a primary, one replica, three sentinels
(quorum 2, ``down-after-milliseconds`` 500) and a sidecar on ``redis+sentinel://``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final, Self

import redis

from bench.chaos.scenario import Scenario, blocking, recovered, start_fault
from bench.chaos.service import SidecarProcess
from bench.chaos.topology import MASTER_NAME, Node, SentinelGroup, data_client, log, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from bench.chaos.check import Result
    from bench.chaos.client import Driver
    from bench.chaos.service import Durability

# A sentinel starts no new failover of a primary within twice this of the last
# one; 2 s keeps rounds short and still gives a promotion time to complete.
FAILOVER_TIMEOUT_MS: Final = 2000
# As the operator ran it. Sentinel may then judge a just-promoted primary
# down before its first PING (see SentinelGroup.settled), so every round waits
# for the sentinels to settle before it restarts the killed node.
DOWN_AFTER_MS: Final = 500
# Promotion is down-after (0.5 s), an election, and a retry after 2 x the
# failover timeout when the first one found no replica ready.
PROMOTION_TIMEOUT_S: Final = 60.0


class SentinelEnv:
    """A Sentinel group, and the sidecars started on it."""

    def __init__(self, work: Path) -> None:
        self.group = SentinelGroup(
            work / "redis", down_after_ms=DOWN_AFTER_MS, failover_timeout_ms=FAILOVER_TIMEOUT_MS
        )
        self.work = work

    @contextlib.contextmanager
    def started(self) -> Iterator[Self]:
        with self.group:
            self.group.wait_until_ready_to_fail_over()
            yield self

    def sidecar(self, durability: Durability, name: str = "sidecar") -> SidecarProcess:
        """A sidecar on the group's sentinels, to start with ``with``."""
        return SidecarProcess(self.work / name, self.group.url, durability)

    def roles(self) -> tuple[Node, Node]:
        """(primary, replica) as the sentinels name them now."""
        primary = self.group.node(self.group.primary_port())
        log.info("primary %d, replica %d", primary.port, self.group.other(primary).port)
        return primary, self.group.other(primary)

    def cut_off(self, primary: Node, replica: Node) -> None:
        """Freeze the replica, then drop its link, so nothing more reaches it."""
        replica.freeze()
        with data_client(primary.port) as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        wait_for("the primary to drop its replica", lambda: connected_replicas(primary.port) == 0)

    def wait_promoted(self, node: Node) -> None:
        wait_for(
            f"node {node.port} to be promoted",
            lambda: self.group.promoted(node.port),
            PROMOTION_TIMEOUT_S,
        )

    def rejoin(self, node: Node, primary: Node) -> None:
        """Restart ``node`` as a replica of ``primary``, as its rewritten config would."""
        if not node.running:
            node.restart(self.group.replica_args(primary.port))
        wait_for(f"node {node.port} to sync", lambda: self.group.synced(node.port))


def connected_replicas(port: int) -> int:
    with data_client(port) as client:
        return int(client.info("replication")["connected_slaves"])


async def kill_primary(
    env: SentinelEnv, service: SidecarProcess, *, rounds: int, frozen: bool
) -> Result:
    """Rounds of: rotate (200), SIGKILL the primary, promote the replica, probe, rejoin.

    With ``frozen``, the replica is frozen and cut off before one more rotate,
    which cannot reach it: with durability that rotate must be refused.
    """
    name = "sentinel kill, replica frozen+cut" if frozen else "sentinel kill"
    scenario = Scenario(name, "frozen" if frozen else "kill", service)

    async def rounds_of(driver: Driver) -> None:
        for _ in range(rounds):
            await blocking(env.group.wait_until_ready_to_fail_over)
            await driver.rotate_until_acked()
            primary, replica = await blocking(env.roles)
            if frozen:
                await blocking(env.cut_off, primary, replica)
                await driver.rotate(must_refuse=True)
            fault = start_fault(driver, name)
            await blocking(primary.kill)
            replica.thaw()
            await blocking(env.wait_promoted, replica)
            recovered(fault)
            await driver.probe()
            await blocking(env.rejoin, primary, replica)

    return await scenario.run(rounds_of)


async def coordinated_failover(env: SentinelEnv, service: SidecarProcess, *, rounds: int) -> Result:
    """Rounds of ``SENTINEL FAILOVER`` while rotations and signatures keep coming."""
    scenario = Scenario("sentinel coordinated failover", "failover", service)

    async def rounds_of(driver: Driver) -> None:
        for _ in range(rounds):
            await blocking(env.group.wait_until_ready_to_fail_over)
            await driver.rotate_until_acked()
            old, new = await blocking(env.roles)
            async with driver.rotate_load():
                fault = start_fault(driver, scenario.name)
                await blocking(sentinel_failover, env.group)
                await blocking(env.wait_promoted, new)
                await blocking(env.rejoin, old, new)
            recovered(fault)
            await driver.probe()
            # The next change goes to the new primary; signs must follow it at once.
            await driver.rotate_until_acked()
            await driver.probe()

    return await scenario.run(rounds_of)


def sentinel_failover(group: SentinelGroup) -> None:
    with redis.Redis(port=group.sentinels[0].port, socket_timeout=5) as client:
        client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)


async def replica_down(
    env: SentinelEnv, service: SidecarProcess, *, rounds: int, refusals: int
) -> Result:
    """The replica frozen (odd rounds: killed) for ``refusals`` rotates, then back.

    With durability every rotate meanwhile must be refused within the
    deadlines, and once the replica is back a rotate must be acknowledged.
    """
    scenario = Scenario("sentinel replica down", "replica-down", service)

    async def rounds_of(driver: Driver) -> None:
        for round_ in range(rounds):
            killed = round_ % 2 == 1
            primary, replica = await blocking(env.roles)
            # No failover comes next, so the replica need only be in sync, whatever
            # the sentinels last heard of it.
            await blocking(env.rejoin, replica, primary)
            await driver.rotate_until_acked()
            fault = start_fault(driver, "replica killed" if killed else "replica frozen")
            await blocking(replica.kill if killed else replica.freeze)
            for _ in range(refusals):
                await driver.rotate(must_refuse=True)
            replica.thaw()
            await blocking(env.rejoin, replica, primary)
            recovered(fault)
            await driver.rotate_until_acked()
            await driver.probe()

    return await scenario.run(rounds_of)


async def steady_rotates(env: SentinelEnv, service: SidecarProcess, *, count: int) -> Result:
    """Rotations one after another under sign load, no fault: what a rotate costs."""
    scenario = Scenario("sentinel no fault", "steady", service)

    async def rotations(driver: Driver) -> None:
        await blocking(env.group.wait_until_ready_to_fail_over)
        for _ in range(count):
            await driver.rotate_until_acked()
        await driver.probe()

    return await scenario.run(rotations)
