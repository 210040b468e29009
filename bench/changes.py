"""Latency of a create through the served sidecar, p50 and p99, in one run.

    python -m bench.changes                          # this tree
    BENCH_BASE_TREE=/tmp/main python -m bench.changes  # and another tree, alternating

Starts an embedded Valkey and the real sidecar (``python -m sidecar serve``),
then sends ``BENCH_CHANGES`` creates (default 400) one after another, each a
new name of one owner, and prints the latency percentiles. The change rate
limit, when the tree has one, is set high enough never to refuse, so what is
measured is the cost of counting. With ``BENCH_BASE_TREE`` (a checkout of the
code to compare with, such as ``git archive main | tar -x -C /tmp/main``), the
same runs against a sidecar started from that tree, in alternating rounds on
one Valkey, so a noisy machine hits both alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.__main__ import DID, sidecar_env, wait_ready
from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.cli.devmode import embedded_binary
from sidecar.storage.embedded import EmbeddedValkey, free_port

ROUNDS = 4


@contextmanager
def sidecar(env: dict[str, str], tree: str | None) -> Iterator[None]:
    """``python -m sidecar serve`` from this tree, or from ``tree`` (run there, so
    that its package comes first on the path)."""
    argv = [sys.executable, "-m", "sidecar", "serve"]
    child = subprocess.Popen(
        argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        child.terminate()
        child.wait(timeout=30)


def post(xrpc_port: int, key: str, nsid: str, name: str) -> int:
    """The status of one call; a 503 (Redis too slow on a loaded machine) is counted."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{xrpc_port}/xrpc/place.wisp.v2.secret.{nsid}",
        data=f'{{"name": "{name}"}}'.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (loopback)
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        if error.code not in (404, 503):
            raise
        return error.code


def creates(xrpc_port: int, key: str, prefix: str, count: int) -> tuple[list[float], int]:
    """Milliseconds per create answered 200, for ``count`` creates of new names in
    sequence, and how many were answered 503.

    Each is deleted again, untimed, so the owner never nears a quota.
    """
    took, unavailable = [], 0
    for number in range(count):
        name = f"{prefix}-{number}"
        started = time.perf_counter()
        status = post(xrpc_port, key, "create", name)
        elapsed = (time.perf_counter() - started) * 1000
        if status == 200:
            took.append(elapsed)
        else:
            unavailable += 1
        post(xrpc_port, key, "delete", name)
    return took, unavailable


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49]:6.2f} ms  p99 {cuts[98]:6.2f} ms  (n={len(samples)})"


def main() -> int:
    count = int(os.environ.get("BENCH_CHANGES", "400"))
    trees = {"this tree": None}
    base_tree = os.environ.get("BENCH_BASE_TREE")
    if base_tree:
        trees["base tree"] = base_tree
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}; {count} creates per round")
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedValkey(Path(tmp) / "v", binary=embedded_binary(), persist=False) as valkey,
    ):
        key = generate_api_key()
        keys = Path(tmp) / "keys"
        keys.write_text(keys_file_line(DID, key) + "\n")
        samples: dict[str, list[float]] = {label: [] for label in trees}
        for round_ in range(ROUNDS):
            order = list(trees.items())
            if round_ % 2:
                order.reverse()
            for label, tree in order:
                ports = {name: free_port() for name in ("xrpc", "sign", "ops")}
                env = sidecar_env(valkey.url, keys, Path(tmp), ports)
                if tree is None:
                    # Counted, never refused: the cost of the limit, not of a 429.
                    env["SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE"] = "1000000"
                with sidecar(env, tree):
                    wait_ready(f"http://127.0.0.1:{ports['ops']}/readyz")
                    creates(ports["xrpc"], key, f"warm{round_}{label[0]}", 20)
                    took, unavailable = creates(ports["xrpc"], key, f"r{round_}{label[0]}", count)
                samples[label] += took
                print(f"round {round_ + 1} {label:>9}: {percentiles(took)}, {unavailable} x 503")
        print()
        for label, took in samples.items():
            print(f"all rounds {label:>9}: {percentiles(took)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
