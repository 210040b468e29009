"""Load generators: wrk when installed (C, never the bottleneck here), else aiohttp.

Each run reports requests per second and latency percentiles. wrk speaks TCP
only, so a Unix socket is always loaded by the aiohttp generator (``unix=``),
and a comparison of the two transports uses that one generator for both.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class Run:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, body: bytes, content_type: str, connections: int, seconds: int) -> Run:
    """Run wrk with one thread (the other core is the server's) and parse its report."""
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "body"
        payload.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(
            f'local f = io.open("{payload}", "rb")\n'
            "wrk.body = f:read('*a')\nf:close()\n"
            'wrk.method = "POST"\n'
            f'wrk.headers["Content-Type"] = "{content_type}"\n'
            "function done(summary, latency, requests)\n"
            "  local e = summary.errors\n"
            '  io.write(string.format("ERRORS %d\\n", e.connect + e.read + e.write'
            " + e.status + e.timeout))\n"
            "end\n"
        )
        completed = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    out = completed.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = int(re.search(r"ERRORS (\d+)", out).group(1))  # type: ignore[union-attr]
    return Run(rps, p50, p99, errors)


async def _aiohttp_load(
    url: str, body: bytes, content_type: str, connections: int, seconds: int, unix: str | None
) -> Run:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector: aiohttp.BaseConnector = (
        aiohttp.TCPConnector(limit=connections)
        if unix is None
        else aiohttp.UnixConnector(path=unix, limit=connections)
    )
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(
                    url, data=body, headers={"Content-Type": content_type}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return Run(len(latencies) / elapsed, cuts[49], cuts[98], errors)


def aiohttp_load(
    url: str,
    body: bytes,
    content_type: str,
    connections: int,
    seconds: int,
    unix: str | None = None,
) -> Run:
    """Fallback load generator; on two cores it may be the bottleneck (the report says so).

    With ``unix``, connections go to that socket path; ``url`` then gives only
    the path and query (its host is sent as the Host header).
    """
    return asyncio.run(_aiohttp_load(url, body, content_type, connections, seconds, unix))


def load(url: str, body: bytes, content_type: str, connections: int, seconds: int) -> Run:
    runner = wrk if have_wrk() else aiohttp_load
    return runner(url, body, content_type, connections, seconds)
