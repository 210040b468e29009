"""Store behaviours that no HTTP test shows: reads while Redis holds writes, key parsing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from support import ALICE, CREATE, call, opened

from sidecar.store import parse_secret_key

if TYPE_CHECKING:
    import redis
    from aiohttp.test_utils import TestClient
    from conftest import Keys

    from sidecar.app import Sidecar


async def test_batched_reads_run_while_writes_are_paused(
    sidecar: Sidecar, xrpc: TestClient[Any, Any], keys: Keys, raw_redis: redis.Redis
) -> None:
    """get_envelopes answers while Redis pauses writes, as a coordinated FAILOVER makes it do."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    # Signing traffic keeps the read script loaded; an unknown script's flags
    # cannot be known, so Redis would hold its first run as a possible write.
    refs = [(ALICE, "orders")]
    await sidecar.store.get_envelopes(refs)
    raw_redis.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        stored = await asyncio.wait_for(sidecar.store.get_envelopes(refs), 10)
    finally:
        raw_redis.execute_command("CLIENT", "UNPAUSE")
    assert opened(sidecar.keyring, refs, stored) == [(created["token"], 1)]


@pytest.mark.parametrize(
    ("key", "ref"),
    [
        ("wsc:{did:plc:abc}:s:orders", ("did:plc:abc", "orders")),
        ("wsc:{did:web:a.example:s:x}:s:b.c", ("did:web:a.example:s:x", "b.c")),
        ("wsc:{did:plc:abc}:idx", None),
        ("wsc:{did:plc:abc}:log", None),
        ("wsc:{did:plc:abc}:jti:00ff", None),
        ("wsc:{did:plc:abc}:s:", None),
        ("wsc:{did:plc:abc}:s:a b", None),
        ("wsc:{not-a-did}:s:orders", None),
        ("other:{did:plc:abc}:s:orders", None),
    ],
)
def test_parse_secret_key_names_only_secret_hashes(key: str, ref: tuple[str, str] | None) -> None:
    """A secret's key parses back to its (did, name); the index, log, jti and strays do not."""
    assert parse_secret_key(key) == ref
