"""Single signs over the Unix socket against the TCP sign port of the same sidecar.

wrk speaks TCP only, so both transports are loaded by the repository's aiohttp
generator (``bench/loadgen.py``), which on two CPUs may itself be the
bottleneck; the ratio compares the transports under the same generator. The
two alternate over the rounds, the order flipping each round.
"""

from __future__ import annotations

import statistics
from typing import Final

from bench.loadgen import Run, aiohttp_load

CONCURRENCIES: Final = (32, 256)


def compare_transports(
    *, tcp_url: str, socket_path: str, path_and_query: str, body: bytes, rounds: int, seconds: int
) -> list[tuple[int, float]]:
    """Print each round (req/s and latency of both) and return (c, median socket / TCP)."""
    kind = "application/octet-stream"
    medians = []
    for conns in CONCURRENCIES:
        ratios = []
        for round_ in range(1, rounds + 1):
            runs: dict[str, Run] = {}
            order = ("socket", "tcp") if round_ % 2 == 0 else ("tcp", "socket")
            for label in order:
                if label == "tcp":
                    runs[label] = aiohttp_load(tcp_url, body, kind, conns, seconds)
                else:
                    url = f"http://sidecar{path_and_query}"
                    runs[label] = aiohttp_load(url, body, kind, conns, seconds, unix=socket_path)
            for label in ("tcp", "socket"):
                r = runs[label]
                print(
                    f"{f'{label} c={conns} #{round_}':>22} {r.requests_per_s:9.0f}"
                    f" {r.p50_ms:8.2f} {r.p99_ms:8.2f} errors {r.errors}"
                )
            ratios.append(runs["socket"].requests_per_s / runs["tcp"].requests_per_s)
            print(f"{'socket / tcp':>22} {ratios[-1]:9.2f}")
        medians.append((conns, statistics.median(ratios)))
        print(f"{'median socket/tcp c=' + str(conns):>22} {medians[-1][1]:9.2f}\n")
    return medians
