"""The mission's promise: a rotated token stops signing at once on every replica,
and signing fails closed when Redis is gone, then recovers by itself."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient
from support import (
    ALICE,
    CREATE,
    DELETE,
    LIST,
    ROTATE,
    AiohttpClient,
    Keys,
    SidecarFactory,
    call,
    sign_body,
)

from sidecar.app import create_sign_app, create_xrpc_app
from sidecar.storage.embedded import EmbeddedValkey

Client = TestClient[Any, Any]
BODY = b'{"event":"create"}'


def signature(token: str, body: bytes = BODY) -> str:
    """The X-Webhook-Signature the wisp scheme gives ``body`` under ``token``."""
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Replica:
    xrpc: Client
    sign: Client


async def replicas(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, count: int = 2, **env: str
) -> list[Replica]:
    """``count`` sidecars configured with ``env``, each with clients of XRPC and sign."""
    result = []
    for _ in range(count):
        sidecar = await make_sidecar(**env)
        result.append(
            Replica(
                xrpc=await aiohttp_client(create_xrpc_app(sidecar)),
                sign=await aiohttp_client(create_sign_app(sidecar)),
            )
        )
    return result


async def test_sign_on_b_right_after_rotate_on_a_uses_the_new_token(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys
) -> None:
    """200 times: rotate via replica A, then sign via B; B always signs with the new token."""
    # More changes than the default rate limit allows in a minute.
    a, b = await replicas(
        aiohttp_client, make_sidecar, SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE="1000"
    )
    _, created = await call(a.xrpc, CREATE, keys.alice, {"name": "orders"})
    old = created["token"]
    for round_ in range(200):
        status, rotated = await call(a.xrpc, ROTATE, keys.alice, {"name": "orders"})
        assert status == 200
        status, answer = await sign_body(b.sign, ALICE, "orders", BODY)
        assert status == 200
        header = answer["headers"]["X-Webhook-Signature"]
        assert header == signature(rotated["token"]), round_
        assert header != signature(old)
        assert answer["version"] == round_ + 2
        old = rotated["token"]


async def test_concurrent_signing_during_rotations_never_uses_a_stale_token(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys
) -> None:
    """Under sign load on two replicas, each signature uses a token current during its request."""
    a, b = await replicas(aiohttp_client, make_sidecar)
    clock = time.monotonic
    _, created = await call(a.xrpc, CREATE, keys.alice, {"name": "orders"})
    # version -> (token, rotate started, rotate returned)
    versions: dict[int, tuple[str, float, float]] = {1: (created["token"], -1.0, -1.0)}
    signed: list[tuple[float, float, int, str]] = []
    done = asyncio.Event()

    async def rotator() -> None:
        for version in range(2, 32):
            started = clock()
            status, body = await call(a.xrpc, ROTATE, keys.alice, {"name": "orders"})
            assert status == 200
            versions[version] = (body["token"], started, clock())
        done.set()

    async def signer(replica: Replica) -> None:
        while not done.is_set():
            started = clock()
            status, answer = await sign_body(replica.sign, ALICE, "orders", BODY)
            assert status == 200
            signed.append(
                (started, clock(), answer["version"], answer["headers"]["X-Webhook-Signature"])
            )

    await asyncio.gather(rotator(), *(signer(r) for r in (a, b) for _ in range(8)))
    assert len(signed) > 100
    for started, finished, version, header in signed:
        token, rotate_started, _ = versions[version]
        assert header == signature(token)
        # The token was made before this request ended...
        assert rotate_started <= finished
        # ...and had not yet been replaced when this request started.
        successor = versions.get(version + 1)
        if successor is not None:
            assert started <= successor[2], "signed with a token rotated away before the request"


# The Redis deadline these tests are about (the suite's default is a generous one).
DEADLINE_S = 0.5


async def expect_503_quickly(client: Client, timeout_s: float) -> None:
    """Assert signing fails closed: 503 StorageUnavailable and no headers, at its deadline
    (``timeout_s``) rather than never."""
    # A bound against hangs only, far past the deadline under test.
    async with asyncio.timeout(timeout_s + 30):
        status, answer = await sign_body(client, ALICE, "orders", BODY)
    assert (status, answer["error"]) == (503, "StorageUnavailable")
    assert "headers" not in answer


async def test_sign_fails_closed_when_redis_stops_and_recovers_when_it_returns(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    own_server: EmbeddedValkey,
) -> None:
    """Stopped Redis: sign answers 503 within the timeout; restarted: sign works with no restart."""
    (replica,) = await replicas(
        aiohttp_client,
        make_sidecar,
        1,
        REDIS_URL=own_server.url,
        SIDECAR_REDIS_TIMEOUT_MS=str(int(DEADLINE_S * 1000)),
    )
    _, created = await call(replica.xrpc, CREATE, keys.alice, {"name": "orders"})
    assert (await sign_body(replica.sign, ALICE, "orders", BODY))[0] == 200

    own_server.stop()
    for _ in range(3):
        await expect_503_quickly(replica.sign, DEADLINE_S)

    own_server.start()
    status, answer = await sign_body(replica.sign, ALICE, "orders", BODY)
    assert status == 200
    assert answer["headers"]["X-Webhook-Signature"] == signature(created["token"])


async def test_sign_fails_closed_when_redis_stops_answering(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    own_server: EmbeddedValkey,
) -> None:
    """A frozen Redis (a partition: connected, silent) gives 503 in time, and signing resumes."""
    (replica,) = await replicas(
        aiohttp_client,
        make_sidecar,
        1,
        REDIS_URL=own_server.url,
        SIDECAR_REDIS_TIMEOUT_MS=str(int(DEADLINE_S * 1000)),
    )
    await call(replica.xrpc, CREATE, keys.alice, {"name": "orders"})
    assert (await sign_body(replica.sign, ALICE, "orders", BODY))[0] == 200

    assert own_server.pid is not None
    os.kill(own_server.pid, signal.SIGSTOP)
    try:
        await asyncio.gather(*(expect_503_quickly(replica.sign, DEADLINE_S) for _ in range(5)))
    finally:
        os.kill(own_server.pid, signal.SIGCONT)
    # Thawed, it answers again at once: the connections the deadlines cut are
    # replaced on first use, within the same request.
    statuses = [
        (await sign_body(replica.sign, ALICE, "orders", BODY))[0] for _ in itertools.repeat(0, 3)
    ]
    assert statuses == [200, 200, 200]


async def test_every_xrpc_procedure_gives_up_on_a_frozen_redis_in_time(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    own_server: EmbeddedValkey,
) -> None:
    """Not only signing: reads and writes alike are bounded by the Redis deadline.

    The client has no socket timeout of its own (the store's deadline is the
    only one), so this is what proves no command can wait forever.
    """
    (replica,) = await replicas(
        aiohttp_client,
        make_sidecar,
        1,
        REDIS_URL=own_server.url,
        SIDECAR_REDIS_TIMEOUT_MS=str(int(DEADLINE_S * 1000)),
    )
    await call(replica.xrpc, CREATE, keys.alice, {"name": "orders"})

    assert own_server.pid is not None
    os.kill(own_server.pid, signal.SIGSTOP)
    try:
        for nsid, body, method in (
            (LIST, None, "GET"),
            (ROTATE, {"name": "orders"}, "POST"),
            (CREATE, {"name": "invoices"}, "POST"),
            (DELETE, {"name": "orders"}, "POST"),
        ):
            async with asyncio.timeout(30):  # a hang fails here instead of stalling the suite
                status, answer = await call(replica.xrpc, nsid, keys.alice, body, method=method)
            assert (status, answer["error"]) == (503, "StorageUnavailable"), nsid
    finally:
        os.kill(own_server.pid, signal.SIGCONT)
    # And it recovers by itself once Redis answers again.
    status, listed = await call(replica.xrpc, LIST, keys.alice, method="GET")
    assert status == 200
    assert "orders" in [s["name"] for s in listed["secrets"]]
