"""Latency of ``place.wisp.v2.secret.create``, one call at a time, p50 and p99.

    .venv/bin/python -m bench.create_latency                 # 5 rounds of 400 creates
    CREATE_ROUNDS=9 CREATE_PER_ROUND=800 .venv/bin/python -m bench.create_latency

Starts an embedded Valkey and the real sidecar (``python -m sidecar serve``),
then sends creates for one owner on one kept-alive connection, one after the
other, so each number is a create's whole round trip through the XRPC listener
and its Lua script. Between rounds every secret is deleted again, so each round
starts from an empty owner and stays under the default quota. It also prints
the server's own time per create script (INFO commandstats), which a loaded
machine disturbs far less than a round trip. Never part of the suite; run it
before and after a change to the create path.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import aiohttp
import redis

from bench.__main__ import bench_redis, process, sidecar_env, wait_ready
from sidecar.storage.embedded import free_port

NSID = "place.wisp.v2.secret."


async def one_round(
    base: str, key: str, count: int, server: redis.Redis
) -> tuple[list[float], float]:
    """Create ``count`` secrets one by one, then delete them: each create's seconds, and
    the server's microseconds per create script."""
    headers = {"Authorization": f"Bearer {key}"}
    timings = []
    async with aiohttp.ClientSession(base, headers=headers) as session:
        server.config_resetstat()
        for i in range(count):
            started = time.perf_counter()
            async with session.post(f"/xrpc/{NSID}create", json={"name": f"s{i}"}) as response:
                await response.read()
                assert response.status == 200, response.status
            timings.append(time.perf_counter() - started)
        script_us = float(server.info("commandstats")["cmdstat_eval"]["usec_per_call"])
        for i in range(count):
            async with session.post(f"/xrpc/{NSID}delete", json={"name": f"s{i}"}) as response:
                assert response.status == 200, response.status
    return timings, script_us


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    rounds = int(os.environ.get("CREATE_ROUNDS", "5"))
    per_round = int(os.environ.get("CREATE_PER_ROUND", "400"))
    with bench_redis() as (redis_url, key, tmp):
        ports = {name: free_port() for name in ("xrpc", "sign", "ops")}
        env = {**sidecar_env(redis_url, ports, tmp), "SIDECAR_LOG_LEVEL": "warning"}
        with (
            process([sys.executable, "-m", "sidecar", "serve"], env),
            redis.Redis.from_url(redis_url) as server,
        ):
            wait_ready(f"http://127.0.0.1:{ports['ops']}/readyz")
            base = f"http://127.0.0.1:{ports['xrpc']}"
            asyncio.run(one_round(base, key, 50, server))  # warm up: connection, scripts
            p50s, p99s, scripts = [], [], []
            for round_ in range(1, rounds + 1):
                timings, script_us = asyncio.run(one_round(base, key, per_round, server))
                p50s.append(percentile(timings, 0.50) * 1000)
                p99s.append(percentile(timings, 0.99) * 1000)
                scripts.append(script_us)
                print(
                    f"round {round_}: p50 {p50s[-1]:.3f} ms, p99 {p99s[-1]:.3f} ms, "
                    f"script {script_us:.1f} us"
                )
    print(
        f"create, {per_round} a round, median of {rounds} rounds: "
        f"p50 {statistics.median(p50s):.3f} ms, p99 {statistics.median(p99s):.3f} ms, "
        f"script in Redis {statistics.median(scripts):.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
