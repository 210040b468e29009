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


def _wrk_script(directory: Path, method: str, body: bytes | None, headers: dict[str, str]) -> Path:
    lines = []
    if body is not None:
        payload = directory / "body"
        payload.write_bytes(body)
        lines += [f'local f = io.open("{payload}", "rb")', "wrk.body = f:read('*a')", "f:close()"]
    lines.append(f'wrk.method = "{method}"')
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format("ERRORS %d\\n", e.connect + e.read + e.write'
        " + e.status + e.timeout))",
        "end",
    ]
    script = directory / "request.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def start_wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    directory: Path,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """wrk with one thread (the other core is the server's), started in the background."""
    script = _wrk_script(directory, method, body, headers or {})
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    return subprocess.Popen(
        [*argv, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def parse_wrk(out: str) -> Run:
    """The rate, the median and 99th percentile latencies, and the errors of a wrk report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = int(re.search(r"ERRORS (\d+)", out).group(1))  # type: ignore[union-attr]
    return Run(rps, p50, p99, errors)


def wrk(url: str, body: bytes, content_type: str, connections: int, seconds: int) -> Run:
    """Run wrk with one thread and parse its report."""
    with tempfile.TemporaryDirectory() as tmp:
        child = start_wrk(
            url,
            connections=connections,
            seconds=seconds,
            directory=Path(tmp),
            method="POST",
            body=body,
            headers={"Content-Type": content_type},
        )
        out, _ = child.communicate()
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, "wrk")
    return parse_wrk(out)


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
