"""Single server: SIGKILL and restart a server with the append-only file on.

The server keeps Valkey's default ``appendfsync everysec``, as the embedded
one does. That does not make a SIGKILL harmless: while the once-a-second
fsync runs in the background, the server postpones even writing its AOF
buffer to the kernel (for up to 2 s) and still answers the clients, so a
change acknowledged in that window is gone after a SIGKILL. Only a change
the sidecar waited for with ``WAITAOF`` (``SIDECAR_DURABLE_FSYNC`` on, or
auto, the default) is on disk when it is acknowledged.

- ``kill_single``: a few rotations, then the kill; the restart path (the AOF
  loaded, the sidecar reconnected, the acknowledged token signing).
- ``restart_under_rotations``: rotations back to back, and the kill while an
  fsync is under way, when acknowledged writes may still be unwritten. With
  default settings it must lose nothing; the same with fsync off is the
  control, which must lose something, so that the check cannot pass vacuously.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from bench.chaos.history import signature_of
from bench.chaos.scenario import Scenario, blocking, recovered, start_fault
from bench.chaos.service import SidecarProcess
from bench.chaos.topology import Node, data_client

if TYPE_CHECKING:
    from pathlib import Path

    from bench.chaos.check import Result
    from bench.chaos.client import Driver
    from bench.chaos.history import History
    from bench.chaos.service import Durability

# Acknowledged rotations between two kills.
ROTATES_PER_ROUND: Final = 3
# The longest a kill waits for a background fsync to start (everysec: about 1 s).
FSYNC_WAIT_S: Final = 5.0


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


def kill_during_fsync(node: Node) -> bool:
    """SIGKILL ``node`` as soon as its AOF fsync runs in the background; whether one was seen.

    Polled, as the server reports it (``aof_pending_bio_fsync``); after
    ``FSYNC_WAIT_S`` without one the kill comes anyway.
    """
    seen = False
    with data_client(node.port) as client:
        deadline = time.monotonic() + FSYNC_WAIT_S
        while time.monotonic() < deadline:
            info = client.info("persistence")
            # An fsync under way, and writes held back from the kernel meanwhile.
            if (
                int(info.get("aof_pending_bio_fsync", 0)) > 0
                and int(info.get("aof_buffer_length", 0)) > 0
            ):
                seen = True
                break
    node.kill()
    return seen


def lost_by_probe(history: History) -> bool:
    """Whether the last probe signed with a token other than the newest acknowledged one."""
    probe = next(op for op in reversed(history.ops) if op.probe)
    acked = (op for op in history.ops if op.kind != "sign" and op.status == 200)
    newest = max((op for op in acked if op.end < probe.start), key=lambda op: op.end)
    assert newest.token is not None
    return probe.status != 200 or probe.signature != signature_of(newest.token)


async def restart_under_rotations(
    work: Path, durability: Durability, *, rounds: int, control: bool = False
) -> Result:
    """Rounds of: rotations back to back, SIGKILL during an fsync, restart, probe.

    ``control`` (durability without fsync) stops at the first round that lost
    a rotation: one is enough to show the check is not vacuous.
    """
    name = "single restart, " + ("fsync off (control)" if control else "default durability")
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(Node(work / "redis", persist=True))
        service = stack.enter_context(SidecarProcess(work / "sidecar", node.url, durability))
        scenario = Scenario(name, "restart", service, control=control)

        async def rounds_of(driver: Driver) -> None:
            for _ in range(rounds):
                async with driver.rotate_load(pause=0):
                    await driver.rotate_until_acked()
                    fault = start_fault(driver, scenario.name)
                    await blocking(kill_during_fsync, node)
                # The rotation in flight at the kill has its answer (none) by now.
                await blocking(node.start)
                recovered(fault)
                await driver.probe()
                if control and lost_by_probe(driver.history):
                    return

        return await scenario.run(rounds_of)
