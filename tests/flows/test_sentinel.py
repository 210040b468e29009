"""A sidecar that finds its Redis through Sentinel: secret operations, reads, and a failover."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support import (
    ALICE,
    CREATE,
    DELETE,
    LIST,
    ROTATE,
    SERVER_BINARY,
    call,
    create_secrets,
    opened,
    sign_body,
)
from topologies import DATA_PASSWORD, MASTER_NAME, SentinelGroup, SentinelServer, wait_for

from sidecar.app import create_sign_app, create_xrpc_app
from sidecar.errors import StorageUnavailable
from sidecar.storage.embedded import EmbeddedValkey
from sidecar.storage.layout import secret_key

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from support import AiohttpClient, SidecarFactory
    from topologies import Owners

    from sidecar.app import Sidecar

    Client = TestClient[Any, Any]


async def test_secret_operations_work_through_sentinel(
    sentinel_xrpc: Client, sentinel_sidecar: Sidecar, sentinel_group: SentinelGroup, owners: Owners
) -> None:
    """Through sentinel addresses only, all four procedures work and write to the primary."""
    xrpc = sentinel_xrpc
    key = owners.keys[ALICE]
    status, created = await call(xrpc, CREATE, key, {"name": "orders"})
    assert status == 200, created
    status, rotated = await call(xrpc, ROTATE, key, {"name": "orders"})
    assert status == 200, rotated
    status, listed = await call(xrpc, LIST, key, method="GET")
    assert [item["name"] for item in listed["secrets"]] == ["orders"]
    assert listed["secrets"][0]["lastRotatedAt"] == rotated["rotatedAt"]

    # The sentinels hold no data: the hash is on the primary they name.
    assert sentinel_group.primary_port() == sentinel_group.primary.port
    with sentinel_group.primary_client() as primary:
        stored = primary.hgetall(secret_key(ALICE, "orders"))
    assert stored[b"ver"] == b"2"
    token = sentinel_sidecar.keyring.open(stored[b"env"].decode(), did=ALICE, name="orders")
    assert token == rotated["token"]

    assert await call(xrpc, DELETE, key, {"name": "orders"}) == (200, {})
    assert await call(xrpc, LIST, key, method="GET") == (200, {"secrets": []})


async def test_get_envelopes_through_sentinel_returns_current_envelopes(
    sentinel_xrpc: Client, sentinel_sidecar: Sidecar, owners: Owners
) -> None:
    """A batch read through Sentinel returns each secret's newest envelope and version, in order."""
    some = {did: owners.keys[did] for did in owners.dids[:4]}
    tokens = await create_secrets(sentinel_xrpc, some, ["a", "b"])
    versions = dict.fromkeys(tokens, 1)
    for did, key in some.items():
        _, body = await call(sentinel_xrpc, ROTATE, key, {"name": "b"})
        tokens[did, "b"], versions[did, "b"] = body["token"], 2

    refs = [*tokens, (owners.dids[0], "missing")]
    envelopes = await sentinel_sidecar.store.get_envelopes(refs)
    assert opened(sentinel_sidecar.keyring, refs, envelopes) == [
        (tokens[ref], versions[ref]) if ref in tokens else None for ref in refs
    ]


async def test_signing_through_sentinel_uses_the_current_token(
    aiohttp_client: AiohttpClient, sentinel_xrpc: Client, sentinel_sidecar: Sidecar, owners: Owners
) -> None:
    """/v1/sign through Sentinel signs with the secret's token, and with the new one at once."""
    xrpc = sentinel_xrpc
    sign = await aiohttp_client(create_sign_app(sentinel_sidecar))
    key = owners.keys[ALICE]
    payload = b'{"event":"push"}'
    for procedure, version in ((CREATE, 1), (ROTATE, 2)):
        _, body = await call(xrpc, procedure, key, {"name": "hooks"})
        status, answer = await sign_body(sign, ALICE, "hooks", payload)
        assert status == 200, answer
        mac = hmac.new(body["token"].encode(), payload, hashlib.sha256).hexdigest()
        assert answer["headers"] == {"X-Webhook-Signature": f"sha256={mac}"}
        assert answer["version"] == version


async def test_a_wrong_data_password_is_refused_without_falling_back(
    make_sidecar: SidecarFactory, sentinel_url: str
) -> None:
    """With a wrong password for the data nodes, calls fail closed as StorageUnavailable."""
    wrong = sentinel_url.replace(DATA_PASSWORD, "not-the-password")
    sidecar: Sidecar = await make_sidecar(REDIS_URL=wrong)
    assert not await sidecar.redis_ok()
    with pytest.raises(StorageUnavailable):
        await sidecar.store.get_envelopes([(ALICE, "orders")])


async def test_the_sidecar_follows_a_failover(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    owners: Owners,
    tmp_path: Path,
) -> None:
    """When the primary dies, reads find the promoted replica at once and writes after one 503."""
    group = SentinelGroup(tmp_path / "failover")
    group.start()
    try:
        group.wait_until_ready_to_fail_over()
        sidecar: Sidecar = await make_sidecar(
            REDIS_URL=group.url, SIDECAR_API_KEYS_FILE=str(owners.path)
        )
        xrpc = await aiohttp_client(create_xrpc_app(sidecar))
        key = owners.keys[ALICE]
        _, created = await call(xrpc, CREATE, key, {"name": "orders"})
        with group.primary_client() as primary:
            # Replication is asynchronous; losing an unreplicated write in a
            # failover is Redis's behaviour, not the sidecar's, so wait it out.
            assert primary.execute_command("WAIT", 1, 5000) == 1

        group.primary.stop()
        wait_for(
            "the sentinels to agree on the promoted replica",
            lambda: group.agree_on_primary(group.replica.port) and _is_primary(group.replica.port),
        )

        # A read is idempotent, so the store retries it once on a fresh connection.
        stored = await sidecar.store.get_envelope(ALICE, "orders")
        assert stored is not None
        assert sidecar.keyring.open(stored.envelope, did=ALICE, name="orders") == created["token"]

        # A write is never retried by the client: a pooled connection to the
        # dead primary may fail it once, with 503, and the next one succeeds.
        outcomes: list[tuple[int, Any]] = []
        for _ in range(2):
            outcomes.append(await call(xrpc, ROTATE, key, {"name": "orders"}))
            if outcomes[-1][0] == 200:
                break
        assert [status for status, _ in outcomes[:-1]] in ([], [503])
        status, rotated = outcomes[-1]
        assert status == 200, rotated
        with redis.Redis(port=group.replica.port, password=DATA_PASSWORD) as promoted:
            stored_hash = promoted.hgetall(secret_key(ALICE, "orders"))
        # The refused attempt reached no live server, so exactly one rotation applied.
        assert stored_hash[b"ver"] == b"2"
        token = sidecar.keyring.open(stored_hash[b"env"].decode(), did=ALICE, name="orders")
        assert token == rotated["token"]
    finally:
        group.stop()


def _is_primary(port: int) -> bool:
    with redis.Redis(port=port, password=DATA_PASSWORD, socket_timeout=5) as client:
        role: list[Any] = client.role()
    return bool(role[0] == b"master")


SENTINEL_PASSWORD = "sentinel-own-pw-4821"


@pytest.fixture
def protected_sentinel_url(tmp_path: Path) -> Iterator[str]:
    """A primary and one sentinel of its own that requires ``SENTINEL_PASSWORD``.

    Apart from the session's group, so its password touches no other test; one
    sentinel under a quorum of 2 never fails anything over.
    """
    with EmbeddedValkey(tmp_path / "primary", binary=SERVER_BINARY, persist=False) as primary:
        with redis.Redis(port=primary.port) as client:
            client.config_set("requirepass", DATA_PASSWORD)
        with SentinelServer(tmp_path / "sentinel", primary_port=primary.port) as sentinel:
            # Set after start, because start() waits for an unauthenticated PING.
            with redis.Redis(port=sentinel.port) as client:
                client.execute_command(
                    "ACL", "SETUSER", "default", "resetpass", f">{SENTINEL_PASSWORD}"
                )
            yield f"redis+sentinel://:{DATA_PASSWORD}@127.0.0.1:{sentinel.port}/{MASTER_NAME}/0"


async def test_sentinels_with_a_password_of_their_own(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    protected_sentinel_url: str,
    owners: Owners,
) -> None:
    """With SIDECAR_REDIS_SENTINEL_PASSWORD the sidecar finds the primary; without it, 503."""
    key = owners.keys[ALICE]
    refused = await make_sidecar(
        REDIS_URL=protected_sentinel_url, SIDECAR_API_KEYS_FILE=str(owners.path)
    )
    status, answer = await call(
        await aiohttp_client(create_xrpc_app(refused)), CREATE, key, {"name": "orders"}
    )
    assert (status, answer["error"]) == (503, "StorageUnavailable")
    assert SENTINEL_PASSWORD not in answer["message"]

    admitted = await make_sidecar(
        REDIS_URL=protected_sentinel_url,
        SIDECAR_API_KEYS_FILE=str(owners.path),
        SIDECAR_REDIS_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
    )
    status, created = await call(
        await aiohttp_client(create_xrpc_app(admitted)), CREATE, key, {"name": "orders"}
    )
    assert status == 200, created
    status, signed = await sign_body(
        await aiohttp_client(create_sign_app(admitted)), ALICE, "orders", b"{}"
    )
    assert status == 200, signed
    expected = hmac.new(created["token"].encode(), b"{}", hashlib.sha256).hexdigest()
    assert signed["headers"]["X-Webhook-Signature"] == "sha256=" + expected
