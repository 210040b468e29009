"""Sign throughput of the sidecar against a bare aiohttp baseline, in one run.

    make bench                                # 5 rounds of 5 s per measurement
    BENCH_SECONDS=10 BENCH_ROUNDS=9 make bench
    BENCH_PARTS=batch,anonymous make bench    # only some parts (names below)
    BENCH_PARTS=anonymous BENCH_SECONDS=3 BENCH_ISOLATION_ROUNDS=1 make bench  # short

Starts an embedded Valkey, the real sidecar (``python -m sidecar serve``) and
the baseline (``bench/baseline.py``) as separate processes, then loads each
with 1 KiB bodies at 32 and 256 connections and prints ``ratio = sidecar /
baseline``; then batches of 100 against the bare batch endpoint
(``bench/batch.py``), and single signs over the sign socket against TCP
(``bench/transport.py``). It also reports each server's CPU use during its run: a server
near one full core is the bottleneck, as it should be; a server well below it
means the load generator was.

Then the isolation scenarios of ``bench/isolation.py``: sign throughput while
the XRPC port is flooded, in one process and with the roles split.
``BENCH_PARTS`` picks the parts, comma-separated: ``single``, ``batch``,
``transport``, ``anonymous``, ``authenticated``, ``big-owner`` (default: all).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import isolation
from bench.batch import batch_body, compare_batches
from bench.loadgen import Run, have_wrk, load
from bench.processes import process, wait_ready
from bench.transport import compare_transports
from harness import ServeProcess, sidecar_env
from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.cli.devmode import embedded_binary
from sidecar.crypto import encode_kek, generate_kek
from sidecar.storage.embedded import EmbeddedValkey, free_port

DID = "did:plc:bench0000000000000000000"
BODY = (b'{"event":"create","did":"did:plc:abc","pad":"' + b"x" * 1024)[:1020] + b'"}\n\n'
CONCURRENCIES = (32, 256)
TICKS = os.sysconf("SC_CLK_TCK")
PARTS = ("single", "batch", "transport", *isolation.SCENARIOS)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass(frozen=True)
class Measured:
    run: Run
    cpu_share: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_share / self.run.requests_per_s * 1e6


def measure(pid: int, url: str, body: bytes, content_type: str, conns: int, secs: int) -> Measured:
    load(url, body, content_type, conns, 1)  # warm up: connections, caches, JIT-free paths
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    run = load(url, body, content_type, conns, secs)
    share = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    return Measured(run, share)


def create_secret(xrpc_port: int, key: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{xrpc_port}/xrpc/place.wisp.v2.secret.create",
        data=json.dumps({"name": "orders"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert response.status == 200


def batch_totals(ops_port: int) -> tuple[float, float]:
    """(reads, round trips) of coalesced envelope reads so far, from the sidecar's metrics."""
    url = f"http://127.0.0.1:{ops_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(f"wisp_sidecar_sign_read_batch_size{suffix} "):
                values[suffix] = float(line.split()[1])
    return values["_sum"], values["_count"]


@contextmanager
def bench_redis() -> Iterator[tuple[str, str, Path]]:
    """An embedded Valkey in a temporary directory, with an API key for ``DID`` in
    ``keys`` there: (the Valkey's URL, the key, the directory)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedValkey(Path(tmp) / "v", binary=embedded_binary(), persist=False) as v,
    ):
        key = generate_api_key()
        (Path(tmp) / "keys").write_text(keys_file_line(DID, key) + "\n")
        yield v.url, key, Path(tmp)


def bench_env(redis_url: str, tmp: Path, **settings: str) -> dict[str, str]:
    """The environment of a benchmarked sidecar in ``tmp`` (``bench_redis``): the
    harness's (loopback, free ports), a fresh KEK, then every ``SIDECAR_*`` variable
    exported in the shell (``SIDECAR_XRPC_LOOP_SHARE=100 make bench`` for a "before"
    run), then ``settings``."""
    exported = {name: value for name, value in os.environ.items() if name.startswith("SIDECAR_")}
    own = {
        "REDIS_URL": redis_url,
        "SIDECAR_KEK": encode_kek(generate_kek()),
        "SIDECAR_API_KEYS_FILE": str(tmp / "keys"),
    }
    # Merged first: an exported variable may name a setting given here as well.
    return sidecar_env(tmp / "data", **(own | exported | settings))


def port(env: dict[str, str], listener: str) -> int:
    """The port ``listener`` of the sidecar run with ``env`` binds."""
    return int(env[f"SIDECAR_{listener.upper()}_PORT"])


def main() -> int:
    seconds = int(os.environ.get("BENCH_SECONDS", "5"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    # Each isolation round is two measurements and a flood: fewer by default.
    isolation_rounds = int(os.environ.get("BENCH_ISOLATION_ROUNDS", "3"))
    parts = os.environ.get("BENCH_PARTS", ",".join(PARTS)).split(",")
    generator = "wrk -t1" if have_wrk() else "aiohttp client (install wrk for a lighter one)"
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]} load generator: {generator}")
    with bench_redis() as (redis_url, key, tmp):
        env = bench_env(redis_url, tmp, SIDECAR_SIGN_SOCKET=str(tmp / "sign.sock"))
        ports = {name: port(env, name) for name in ("xrpc", "sign", "ops")}
        ports |= {name: free_port() for name in ("base", "batch")}
        baseline_argv = [sys.executable, "-m", "bench.baseline", "--port", str(ports["base"])]
        bare_argv = [sys.executable, "-m", "bench.batch_baseline", "--port", str(ports["batch"])]
        with (
            ServeProcess(env, keep_output=False) as sidecar,
            process(baseline_argv, env) as baseline,
            process(bare_argv, env) as bare,
        ):
            sidecar.wait_until_ready()
            create_secret(ports["xrpc"], key)
            sign_url = f"http://127.0.0.1:{ports['sign']}/v1/sign?did={DID}&name=orders"
            base_url = f"http://127.0.0.1:{ports['base']}/v1/sign"
            wait_ready(f"http://127.0.0.1:{ports['base']}/v1/sign")  # 405 is an answer
            print(f"body {len(BODY)} bytes, {rounds} rounds of {seconds} s per measurement\n")
            header = (
                f"{'':>22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu':>5} "
                f"{'us cpu/req':>10} {'errors':>6}"
            )
            print(header)
            ratios = []
            for conns in CONCURRENCIES if "single" in parts else ():
                kind = "application/octet-stream"
                round_ratios = []
                # Alternate the two servers over several rounds, so a noisy
                # neighbour on a shared machine hits both, and take the median.
                # The order flips each round, so neither server always runs
                # in the other's wake.
                for round_ in range(1, rounds + 1):
                    if round_ % 2 == 0:
                        base = measure(baseline.pid, base_url, BODY, kind, conns, seconds)
                    reads, trips = batch_totals(ports["ops"])
                    ours = measure(sidecar.pid, sign_url, BODY, kind, conns, seconds)
                    reads_after, trips_after = batch_totals(ports["ops"])
                    if round_ % 2 == 1:
                        base = measure(baseline.pid, base_url, BODY, kind, conns, seconds)
                    coalesced = (reads_after - reads) / max(trips_after - trips, 1)
                    for label, m in (("baseline", base), ("sidecar", ours)):
                        r = m.run
                        print(
                            f"{label + f' c={conns} #{round_}':>22} {r.requests_per_s:9.0f}"
                            f" {r.p50_ms:8.2f} {r.p99_ms:8.2f} {m.cpu_share:5.2f}"
                            f" {m.cpu_us_per_request:10.1f} {r.errors:6d}"
                        )
                    ratio = ours.run.requests_per_s / base.run.requests_per_s
                    round_ratios.append(ratio)
                    # CPU per request is steadier than throughput on a shared machine.
                    cpu_ratio = base.cpu_us_per_request / ours.cpu_us_per_request
                    print(
                        f"{'ratio':>22} {ratio:9.2f}   (by cpu/request: {cpu_ratio:.2f}; "
                        f"{coalesced:.1f} sign requests per Redis round trip)"
                    )
                median = statistics.median(round_ratios)
                ratios.append((conns, median))
                print(f"{'median ratio c=' + str(conns):>22} {median:9.2f}\n")

            bare_url = f"http://127.0.0.1:{ports['batch']}/v1/sign/batch"
            wait_ready(bare_url)
            medians = [f"ratio@{c}={r:.2f}" for c, r in ratios]
            if "batch" in parts:
                batch = compare_batches(
                    measure,
                    sidecar=(sidecar.pid, f"http://127.0.0.1:{ports['sign']}/v1/sign/batch"),
                    bare=(bare.pid, bare_url),
                    batch=batch_body(DID, "orders", BODY),
                    rounds=rounds,
                    seconds=seconds,
                )
                medians.append(f"batch={batch:.2f}")
            if "transport" in parts:
                print("single signs, aiohttp load generator for both: socket against TCP")
                for c, r in compare_transports(
                    tcp_url=sign_url,
                    socket_path=env["SIDECAR_SIGN_SOCKET"],
                    path_and_query=f"/v1/sign?did={DID}&name=orders",
                    body=BODY,
                    rounds=rounds,
                    seconds=seconds,
                ):
                    medians.append(f"socket/tcp@{c}={r:.2f}")
            if medians:
                print("\nmedian " + "  ".join(medians))
        scenarios = [name for name in isolation.SCENARIOS if name in parts]
        rows = isolation.run(scenarios, seconds, isolation_rounds, env, BODY)
        if rows:
            print("\nisolation: sign under XRPC load, as a ratio to sign alone in the same run")
            print(isolation.HEADER)
            for row in rows:
                isolation.print_row(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
