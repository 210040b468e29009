# mypy: disable-error-code="union-attr,index,list-item,arg-type"
# (redis-py types a synchronous answer as a union with its awaitable and with None.)
"""Rotation across replicas: atomic under contention, and the stored token is the newest."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from support import ALICE, CREATE, ROTATE, call

from sidecar.app import create_xrpc_app
from sidecar.storage.layout import secret_key

if TYPE_CHECKING:
    import redis
    from support import AiohttpClient, Keys, SidecarFactory


async def test_fifty_concurrent_rotates_on_two_replicas_are_serialised(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    raw_redis: redis.Redis,
) -> None:
    """50 rotates via two sidecars all succeed, with distinct tokens and versions 2..51 in order."""
    replicas = [await make_sidecar(), await make_sidecar()]
    clients = [await aiohttp_client(create_xrpc_app(replica)) for replica in replicas]
    status, created = await call(clients[0], CREATE, keys.alice, {"name": "orders"})
    assert status == 200

    results: list[tuple[int, Any]] = await asyncio.gather(
        *(call(clients[i % 2], ROTATE, keys.alice, {"name": "orders"}) for i in range(50))
    )
    assert [status for status, _ in results] == [200] * 50
    tokens = [body["token"] for _, body in results]
    assert len(set(tokens) | {created["token"]}) == 51

    # The audit log records the version each rotate produced, in commit order.
    log = raw_redis.xrange(f"wsc:{{{ALICE}}}:log")
    rotations = [fields for _, fields in log if fields[b"op"] == b"rotate"]
    assert [int(fields[b"ver"]) for fields in rotations] == list(range(2, 52))

    # The hash holds version 51 and an envelope that opens to one of the
    # answered tokens: the script writes both in one step, so that token is
    # the one version 51 was made with.
    stored = raw_redis.hgetall(secret_key(ALICE, "orders"))
    assert stored[b"ver"] == b"51"
    current = replicas[1].keyring.open(stored[b"env"].decode(), did=ALICE, name="orders")
    assert current in tokens


async def test_each_rotate_stores_exactly_the_token_it_returned(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys, raw_redis: redis.Redis
) -> None:
    """Alternating replicas, every rotate's answer is the token stored with the next version."""
    replicas = [await make_sidecar(), await make_sidecar()]
    clients = [await aiohttp_client(create_xrpc_app(replica)) for replica in replicas]
    await call(clients[0], CREATE, keys.alice, {"name": "orders"})
    for version in range(2, 12):
        status, body = await call(clients[version % 2], ROTATE, keys.alice, {"name": "orders"})
        assert status == 200
        stored = raw_redis.hgetall(secret_key(ALICE, "orders"))
        assert int(stored[b"ver"]) == version
        opened = replicas[0].keyring.open(stored[b"env"].decode(), did=ALICE, name="orders")
        assert opened == body["token"]
