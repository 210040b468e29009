"""Single server: SIGKILL and restart a server with the append-only file on.

The sidecar asks for the change to be fsynced (``SIDECAR_DURABLE_FSYNC``,
``WAITAOF``) when the run's durability says so; the server keeps Valkey's
default ``appendfsync everysec``. A SIGKILL loses nothing the server has
written to the kernel, fsynced or not, so this proves the restart path (the
AOF loaded, the sidecar reconnected, the acknowledged token signing); only a
machine crash would tell the fsync apart, and that cannot be injected here.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from bench.chaos.scenario import Scenario, blocking, recovered, start_fault
from bench.chaos.service import SidecarProcess
from bench.chaos.topology import Node

if TYPE_CHECKING:
    from pathlib import Path

    from bench.chaos.check import Result
    from bench.chaos.client import Driver
    from bench.chaos.service import Durability

# Acknowledged rotations between two kills.
ROTATES_PER_ROUND: Final = 3


async def kill_single(work: Path, durability: Durability, *, rounds: int) -> Result:
    """Rounds of: rotations (200), SIGKILL the server, restart it on its AOF, probe."""
    # One server has no replicas to wait for.
    durability = replace(durability, replicas=0)
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(Node(work / "redis", persist=True))
        service = stack.enter_context(SidecarProcess(work / "sidecar", node.url, durability))
        scenario = Scenario("single server AOF kill", "single", service)

        async def rounds_of(driver: Driver) -> None:
            for _ in range(rounds):
                for _ in range(ROTATES_PER_ROUND):
                    await driver.rotate_until_acked()
                fault = start_fault(driver, scenario.name)
                await blocking(node.kill)
                # start() returns once the server answers PING, after loading the AOF.
                await blocking(node.start)
                recovered(fault)
                await driver.probe()

        return await scenario.run(rounds_of)
