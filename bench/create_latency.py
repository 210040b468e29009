"""Latency of ``place.wisp.v2.secret.create``, one call at a time, p50 and p99.

    .venv/bin/python -m bench.create_latency                 # 5 rounds of 400 creates
    CREATE_ROUNDS=9 CREATE_PER_ROUND=800 .venv/bin/python -m bench.create_latency
    CREATE_BASELINE_TREE=../main .venv/bin/python -m bench.create_latency

Starts an embedded Valkey and the real sidecar (``python -m sidecar serve``),
then sends creates for one owner on one kept-alive connection, one after the
other, so each number is a create's whole round trip through the XRPC listener
and its Lua script. Between rounds every secret is deleted again, so each round
starts from an empty owner and stays under the default quota. It also prints
the server's own time per create script (INFO commandstats), which a loaded
machine disturbs less than a round trip.

``CREATE_BASELINE_TREE`` names another source tree (a checkout of main, say):
its sidecar runs beside this one, on its own Valkey, and the creates alternate
between the two, one each in turn, so a noisy neighbour slows both alike. A
create answered 503 (Redis too slow for ``SIDECAR_REDIS_TIMEOUT_MS`` on a
loaded machine) is counted and left out of the percentiles. Never part of the
suite; run it before and after a change to the create path.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis

from bench.__main__ import bench_env, bench_redis
from harness import ServeProcess

NSID = "place.wisp.v2.secret."


@dataclass
class Target:
    """One sidecar under measurement, and what was measured of it."""

    label: str
    base: str
    key: str
    server: redis.Redis
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    scripts_us: list[float] = field(default_factory=list)
    unavailable: int = 0


async def one_round(targets: list[Target], count: int, *, record: bool = True) -> None:
    """Create ``count`` secrets one by one on each target in turn, then delete them."""
    sessions = [
        aiohttp.ClientSession(t.base, headers={"Authorization": f"Bearer {t.key}"}) for t in targets
    ]
    timings: list[list[float]] = [[] for _ in targets]
    try:
        for target in targets:
            target.server.config_resetstat()
        for i in range(count):
            # The order flips each time, so neither always runs in the other's wake.
            order = list(range(len(targets)))
            if i % 2:
                order.reverse()
            for n in order:
                started = time.perf_counter()
                async with sessions[n].post(f"/xrpc/{NSID}create", json={"name": f"s{i}"}) as r:
                    await r.read()
                    status = r.status
                if status == 200:
                    timings[n].append(time.perf_counter() - started)
                elif status != 503:
                    raise AssertionError(f"{targets[n].label}: create answered {status}")
                elif record:
                    targets[n].unavailable += 1
        for n, target in enumerate(targets):
            stats = target.server.info("commandstats")
            if record:
                target.scripts_us.append(float(stats["cmdstat_eval"]["usec_per_call"]))
                target.p50s.append(percentile(timings[n], 0.50) * 1000)
                target.p99s.append(percentile(timings[n], 0.99) * 1000)
            for i in range(count):
                async with sessions[n].post(f"/xrpc/{NSID}delete", json={"name": f"s{i}"}):
                    pass  # a 404 is a create that was answered 503
    finally:
        for session in sessions:
            await session.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def start(stack: ExitStack, label: str, tree: str | None) -> Target:
    """Start a Valkey and a sidecar (from ``tree`` when given) for one target."""
    redis_url, key, tmp = stack.enter_context(bench_redis())
    env = bench_env(redis_url, tmp, SIDECAR_LOG_LEVEL="warning")
    if tree is None:
        # High enough never to refuse: what is measured is the cost of counting.
        env["SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE"] = "1000000"
    else:
        # Safe-path mode keeps the working directory (this tree) off sys.path,
        # so the package comes from the baseline tree, ahead of the installed one.
        env["PYTHONPATH"] = str(Path(tree).resolve())
        env["PYTHONSAFEPATH"] = "1"
    sidecar = stack.enter_context(ServeProcess(env, keep_output=False))
    sidecar.wait_until_ready()
    server = stack.enter_context(redis.Redis.from_url(redis_url))
    return Target(label, sidecar.xrpc, key, server)


def main() -> int:
    rounds = int(os.environ.get("CREATE_ROUNDS", "5"))
    per_round = int(os.environ.get("CREATE_PER_ROUND", "400"))
    baseline_tree = os.environ.get("CREATE_BASELINE_TREE")
    with ExitStack() as stack:
        targets = [start(stack, "this tree", None)]
        if baseline_tree:
            targets.append(start(stack, f"baseline {baseline_tree}", baseline_tree))
        asyncio.run(one_round(targets, 50, record=False))  # warm up: connections, scripts
        for round_ in range(1, rounds + 1):
            asyncio.run(one_round(targets, per_round))
            for t in targets:
                print(
                    f"round {round_} {t.label}: p50 {t.p50s[-1]:.3f} ms, "
                    f"p99 {t.p99s[-1]:.3f} ms, script {t.scripts_us[-1]:.1f} us"
                )
    print(f"create, {per_round} a round, median of {rounds} rounds:")
    for t in targets:
        print(
            f"  {t.label}: p50 {statistics.median(t.p50s):.3f} ms, "
            f"p99 {statistics.median(t.p99s):.3f} ms, "
            f"script in Redis {statistics.median(t.scripts_us):.1f} us, "
            f"{t.unavailable} answered 503"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
