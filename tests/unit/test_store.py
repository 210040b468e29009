"""Store behaviours that no HTTP test shows: reads while Redis holds writes, key parsing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry
from support import ALICE, CREATE, call, opened

from sidecar.app import open_sidecar
from sidecar.settings import Settings
from sidecar.storage.layout import parse_secret_key

if TYPE_CHECKING:
    import redis
    from aiohttp.test_utils import TestClient
    from support import Keys

    from sidecar.app import Sidecar
    from sidecar.xrpc.lexicon import LexiconRegistry


async def test_batched_reads_run_while_writes_are_paused(
    sidecar: Sidecar, xrpc: TestClient[Any, Any], keys: Keys, raw_redis: redis.Redis
) -> None:
    """get_envelopes answers while Redis pauses writes, as a coordinated FAILOVER makes it do."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    # Signing traffic keeps the read script loaded; an unknown script's flags
    # cannot be known, so Redis would hold its first run as a possible write.
    refs = [(ALICE, "orders")]
    await sidecar.store.get_envelopes(refs)
    raw_redis.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # type: ignore[no-untyped-call]
    try:
        stored = await asyncio.wait_for(sidecar.store.get_envelopes(refs), 10)
    finally:
        raw_redis.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    assert opened(sidecar.keyring, refs, stored) == [(created["token"], 1)]


async def test_batched_reads_reload_their_script_after_the_server_lost_it(
    sidecar: Sidecar, xrpc: TestClient[Any, Any], keys: Keys, raw_redis: redis.Redis
) -> None:
    """After SCRIPT FLUSH (as after a restart or failover), the next read still answers."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    refs = [(ALICE, "orders")]
    await sidecar.store.get_envelopes(refs)
    raw_redis.script_flush()
    stored = await sidecar.store.get_envelopes(refs)
    assert opened(sidecar.keyring, refs, stored) == [(created["token"], 1)]


async def test_closing_the_store_closes_its_read_connections(
    env: dict[str, str], lexicons: LexiconRegistry, raw_redis: redis.Redis
) -> None:
    """The sign path's own connections go when the sidecar closes, not with the process."""

    def clients() -> int:
        return len(raw_redis.client_list())

    before = clients()
    settings = Settings.from_env(env)
    async with open_sidecar(settings, registry=CollectorRegistry(), lexicons=lexicons) as sidecar:
        # Concurrent batches each take a connection of their own.
        await asyncio.gather(*(sidecar.store.get_envelopes([(ALICE, "x")]) for _ in range(3)))
        assert clients() >= before + 2
    # The sockets are closed, so the server has their end-of-file queued before
    # this PING. It may handle the PING in the same event-loop pass as the
    # closes; a command sent after its reply comes in a later pass.
    raw_redis.ping()
    assert clients() == before


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
