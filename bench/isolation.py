"""Sign throughput while the XRPC port is loaded, in one process and with the roles split.

Each scenario runs a wrk flood against the XRPC port and, at the same time, the
sign load of ``bench/__main__.py`` (1 KiB bodies, 32 connections), and prints
sign req/s and p99 as a ratio to sign alone, measured in the same run and the
same mode:

- ``anonymous``: ``GET …secret.list`` with no credential, 64 connections
  (every answer a 401);
- ``authenticated``: one owner with 20 secrets listing them, 64 connections;
- ``big-owner``: one owner with 1000 secrets listing them all (the largest
  page) in a loop, 4 connections.

``BENCH_ISOLATION_MODES`` picks the modes (default ``one process,split``).
Each scenario runs ``BENCH_ISOLATION_ROUNDS`` (3) paired rounds, sign alone then
sign under the flood, and reports medians, so that a shared machine's swings
hit both sides of each ratio alike.

Modes: ``one process`` is ``serve`` with every listener (the XRPC loop share
on, unless ``SIDECAR_XRPC_LOOP_SHARE=100`` is exported for a "before" run);
``split`` is a sign process (``SIDECAR_LISTENERS=sign,ops``) and an XRPC
process (``xrpc,ops``) with the settings the Kubernetes Component gives its XRPC
container (its CPU share, ``SIDECAR_XRPC_CPU_SHARE``; ``BENCH_XRPC_CPU_SHARE=100``
for a "before" run), neither niced nor CPU-limited. wrk is required.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.loadgen import Run, have_wrk, parse_wrk, start_wrk, wrk
from harness import ServeProcess
from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.storage.embedded import free_port

SCENARIOS = ("anonymous", "authenticated", "big-owner")
MODES = ("one process", "split")
SIGN_CONNECTIONS = 32
LIST = "/xrpc/place.wisp.v2.secret.list"
# Owners: the one the dispatcher signs for, a small one and a big one.
SIGNER = "did:plc:bench0000000000000000000"
SMALL = "did:plc:benchsmall00000000000000"
BIG = "did:plc:benchbig0000000000000000"
SIZES = {SMALL: 20, BIG: 1000}
COMPONENT = Path(__file__).parent.parent / "deploy/kubernetes/components/sidecar/sidecar-patch.yaml"


@dataclass(frozen=True)
class Flood:
    name: str
    path: str
    connections: int
    owner: str | None


FLOODS = {
    "anonymous": Flood("anonymous", LIST, 64, None),
    "authenticated": Flood("authenticated", LIST, 64, SMALL),
    # The path is settled by _largest_page: with pagination, ?limit=1000.
    "big-owner": Flood("big-owner", LIST, 4, BIG),
}


@dataclass(frozen=True)
class Row:
    """One scenario in one mode: rounds of (sign alone, sign under the flood, the flood)."""

    mode: str
    scenario: str
    rounds: list[tuple[Run, Run, Run]]

    def median(self, value: Callable[[Run, Run, Run], float]) -> float:
        return statistics.median(value(*round_) for round_ in self.rounds)

    @property
    def ratio(self) -> float:
        """Median over rounds of sign req/s under the flood / alone just before it."""
        return self.median(lambda alone, sign, _: sign.requests_per_s / alone.requests_per_s)

    @property
    def p99_ratio(self) -> float:
        return self.median(lambda alone, sign, _: sign.p99_ms / alone.p99_ms)


def _create(xrpc: str, key: str, name: str) -> None:
    request = urllib.request.Request(  # noqa: S310  (a loopback URL we built)
        f"{xrpc}/xrpc/place.wisp.v2.secret.create",
        data=json.dumps({"name": name}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310  (loopback)
            pass
    except urllib.error.HTTPError as exc:
        # The baseline part of the bench made the signing secret already.
        if exc.code != 409:
            raise


def _populate(xrpc: str, keys: dict[str, str]) -> None:
    """The secret signing uses, and the small and the big owner's secrets."""
    _create(xrpc, keys[SIGNER], "orders")
    for owner, count in SIZES.items():
        for number in range(count):
            _create(xrpc, keys[owner], f"s{number:04d}")


def _listed(url: str, key: str) -> int | None:
    """How many secrets one list call at ``url`` returns; None when it is refused."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  (loopback)
            return len(json.loads(response.read())["secrets"])
    except urllib.error.HTTPError:
        return None


def _largest_page(xrpc: str, key: str) -> str:
    """The list path that returns all of the big owner's secrets in one answer: with a
    paginated list, its largest page (limit=1000); without, the plain call."""
    for path in (f"{LIST}?limit=1000", LIST):
        if _listed(xrpc + path, key) == SIZES[BIG]:
            return path
    raise RuntimeError(f"no list call returns the big owner's {SIZES[BIG]} secrets")


def component_xrpc_env() -> dict[str, str]:
    """The settings the Kubernetes Component gives its XRPC container (its literal
    ``env`` values), so that ``split`` measures the layout as deployed.
    ``BENCH_XRPC_CPU_SHARE`` overrides the CPU share, for a "before" run."""
    document = yaml.safe_load(COMPONENT.read_text())
    containers = document["spec"]["template"]["spec"]["initContainers"]
    (container,) = (c for c in containers if c["name"] == "wisp-sidecar-xrpc")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    if "BENCH_XRPC_CPU_SHARE" in os.environ:
        env["SIDECAR_XRPC_CPU_SHARE"] = os.environ["BENCH_XRPC_CPU_SHARE"]
    return env


@contextmanager
def _servers(mode: str, env: dict[str, str], ops2: int) -> Iterator[None]:
    """The sidecar in ``mode``: one process, or a sign and an XRPC process (whose ops
    listener is on ``ops2``)."""
    with ExitStack() as stack:
        if mode == "one process":
            roles = [env]
        else:
            roles = [
                {**env, "SIDECAR_LISTENERS": "sign,ops"},
                {
                    **env,
                    **component_xrpc_env(),
                    "SIDECAR_LISTENERS": "xrpc,ops",
                    "SIDECAR_OPS_PORT": str(ops2),
                },
            ]
        for role in roles:
            stack.enter_context(ServeProcess(role, keep_output=False)).wait_until_ready()
        yield


def _under_flood(
    sign_url: str, body: bytes, flood_url: str, flood: Flood, key: str | None, seconds: int
) -> tuple[Run, Run]:
    """Sign throughput while the flood runs, and the flood's own rate."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with tempfile.TemporaryDirectory() as tmp:
        # The flood starts first and outlasts the sign load on both ends.
        child = start_wrk(
            flood_url,
            connections=flood.connections,
            seconds=seconds + 3,
            directory=Path(tmp),
            headers=headers,
        )
        time.sleep(1)
        sign = wrk(sign_url, body, "application/octet-stream", SIGN_CONNECTIONS, seconds)
        out, _ = child.communicate(timeout=seconds + 60)
    return sign, parse_wrk(out)


def run(
    selected: list[str], seconds: int, rounds: int, env: dict[str, str], body: bytes
) -> list[Row]:
    """Every selected scenario in both modes; the table rows."""
    if not selected:
        return []
    if not have_wrk():
        print("isolation scenarios skipped: they need wrk (apt-get install wrk)")
        return []
    keys = {owner: generate_api_key() for owner in (SIGNER, SMALL, BIG)}
    with tempfile.TemporaryDirectory() as tmp:
        keys_file = Path(tmp) / "isolation-keys"
        keys_file.write_text("".join(keys_file_line(d, k) + "\n" for d, k in keys.items()))
        env = {
            **env,
            "SIDECAR_API_KEYS_FILE": str(keys_file),
            # The big owner's 1000 creates come faster than an owner's default
            # change limit; the floods, not the limit, are what is measured.
            "SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE": "1000000",
        }
        xrpc = f"http://127.0.0.1:{env['SIDECAR_XRPC_PORT']}"
        sign_url = f"http://127.0.0.1:{env['SIDECAR_SIGN_PORT']}/v1/sign?did={SIGNER}&name=orders"
        ops2 = free_port()
        rows: list[Row] = []
        populated = False
        for mode in os.environ.get("BENCH_ISOLATION_MODES", ",".join(MODES)).split(","):
            if mode not in MODES:
                raise SystemExit(f"BENCH_ISOLATION_MODES: {mode!r} is not one of {MODES}")
            with _servers(mode, env, ops2):
                if not populated:
                    _populate(xrpc, keys)
                    populated = True
                wrk(sign_url, body, "application/octet-stream", SIGN_CONNECTIONS, 1)  # warm up
                print(HEADER)
                for name in selected:
                    flood = FLOODS[name]
                    if name == "big-owner":
                        flood = Flood(name, _largest_page(xrpc, keys[BIG]), 4, BIG)
                    key = keys[flood.owner] if flood.owner else None
                    # Paired rounds: sign alone, then under the flood, so that a
                    # shared machine's swings hit both sides of each ratio alike.
                    measured = []
                    for _ in range(rounds):
                        alone = wrk(
                            sign_url, body, "application/octet-stream", SIGN_CONNECTIONS, seconds
                        )
                        sign, flooded = _under_flood(
                            sign_url, body, xrpc + flood.path, flood, key, seconds
                        )
                        measured.append((alone, sign, flooded))
                    rows.append(Row(mode, name, measured))
                    print_row(rows[-1])
    return rows


HEADER = (
    f"{'mode':<12} {'scenario':<14} {'alone/s':>8} {'flooded/s':>9} {'ratio':>6} "
    f"{'p99 alone':>9} {'p99 flood':>9} {'p99 ratio':>9} {'xrpc/s':>7}   (medians)"
)


def print_row(row: Row) -> None:
    print(
        f"{row.mode:<12} {row.scenario:<14} {row.median(lambda a, s, x: a.requests_per_s):8.0f} "
        f"{row.median(lambda a, s, x: s.requests_per_s):9.0f} {row.ratio:6.2f} "
        f"{row.median(lambda a, s, x: a.p99_ms):9.1f} {row.median(lambda a, s, x: s.p99_ms):9.1f} "
        f"{row.p99_ratio:9.2f} {row.median(lambda a, s, x: x.requests_per_s):7.0f}",
        flush=True,
    )
