"""What waiting for the AOF fsync costs a rotation: p50/p99 with the default durability
(``SIDECAR_DURABLE_FSYNC=auto``, which waits for it) and with ``off``, in one run.

    .venv/bin/python -m bench.rotate_latency            # 2000 rotates each
    .venv/bin/python -m bench.rotate_latency --rotates 500

One embedded Valkey with the append-only file on (``appendfsync everysec``, as
``make run`` starts it) and two real sidecars on it, one per setting. The
rotations go one at a time over loopback, alternating between the two
sidecars, so that whatever else loads the machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Final

import aiohttp

from bench.chaos.check import percentile
from bench.chaos.service import Durability, SidecarProcess
from bench.chaos.topology import Node

SETTINGS: Final = {
    "auto (default)": Durability.defaults(),
    "off": Durability(replicas=0, fsync="off"),
}


async def measure(
    services: dict[str, SidecarProcess], rotates: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Latency in seconds of the rotations answered 200 through each sidecar, of ``rotates``
    sent to each, alternating; and how many each answered otherwise (a 503 when the fsync
    was not confirmed within SIDECAR_DURABLE_TIMEOUT_MS)."""
    latencies: dict[str, list[float]] = {label: [] for label in services}
    refused = dict.fromkeys(services, 0)
    async with aiohttp.ClientSession() as session:
        # One secret per sidecar: they share the server and the owner.
        names = {label: f"bench-{n}" for n, label in enumerate(services)}
        for label, service in services.items():
            headers = {"Authorization": f"Bearer {service.api_key}"}
            url = f"{service.xrpc_url}/place.wisp.v2.secret.create"
            body = {"name": names[label]}
            async with session.post(url, json=body, headers=headers) as response:
                response.raise_for_status()
        for _ in range(rotates):
            for label, service in services.items():
                headers = {"Authorization": f"Bearer {service.api_key}"}
                url = f"{service.xrpc_url}/place.wisp.v2.secret.rotate"
                started = time.perf_counter()
                body = {"name": names[label]}
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                if response.status == 200:
                    latencies[label].append(time.perf_counter() - started)
                else:
                    refused[label] += 1
    return latencies, refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rotate_latency", description=__doc__)
    parser.add_argument("--rotates", type=int, default=2000, help="per setting (default 2000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wisp-rotate-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        node = stack.enter_context(Node(work / "valkey", persist=True))
        services = {
            label: stack.enter_context(SidecarProcess(work / f"sidecar-{n}", node.url, durability))
            for n, (label, durability) in enumerate(SETTINGS.items())
        }
        latencies, refused = asyncio.run(measure(services, args.rotates))
    print(f"{args.rotates} rotates per setting, one at a time, loopback, appendfsync everysec")
    print("| SIDECAR_DURABLE_FSYNC | p50 ms | p99 ms | not 200 |")
    print("|---|---|---|---|")
    for label, values in latencies.items():
        p50, p99 = percentile(values, 0.50), percentile(values, 0.99)
        shown = [f"{value * 1000:.1f}" if value is not None else "-" for value in (p50, p99)]
        print(f"| {label} | {shown[0]} | {shown[1]} | {refused[label]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
